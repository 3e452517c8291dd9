"""Two real ranks on the CPU (gloo): evaluation sees every image exactly once.

The trainer never forces the device (the launcher decides), and ``accelerate launch`` has no
multi-process CPU mode without MPI (``--cpu --num_processes 2`` silently runs ONE process;
``--multi_gpu`` without GPUs starts independent single-process runs). So the two ranks are
started by torchrun with ``ACCELERATE_USE_CPU=true``, which Accelerate turns into a MULTI_CPU
(gloo) run; the one-process reference goes through ``accelerate launch``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _run(out: Path, nproc: int) -> dict:
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launch += ["--nproc_per_node", str(nproc)]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = [
        *launch,
        str(HERE / "toy_task.py"),
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "2",
        "--logging_steps",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    env |= {"ACCELERATE_USE_CPU": "true", "ACCELERATE_MIXED_PRECISION": "no"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "all_results.json").read_text())


@pytest.mark.slow  # two accelerate launches, one of them with two ranks
def test_two_ranks_gather_each_eval_image_once(tmp_path):
    one = _run(tmp_path / "one", 1)
    two = _run(tmp_path / "two", 2)
    assert one["num_processes"] == 1
    assert two["num_processes"] == 2
    # 5 eval images over 2 ranks: the sampler pads one rank; gather_for_metrics must drop it
    images = [f"img{i}" for i in range(5)]
    assert two["initial_eval_image_ids"] == one["initial_eval_image_ids"] == images
    # DDP vs one process: the per-image IoUs are exact quotients of pixel counts of the same
    # weights' masks, gathered in another order, so only the float64 mean's summation order
    # differs (5 terms, 1.1e-16 each): abs 1e-12 is a ~2000x margin (a pixel flipped by a logit
    # within rounding of 0 would show as >= 1/256, and has not been seen)
    assert two["initial_eval_mean_iou"] == pytest.approx(one["initial_eval_mean_iou"], abs=1e-12)
    assert two["eval_num_images"] == 5
