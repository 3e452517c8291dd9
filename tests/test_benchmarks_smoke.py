"""The GPU benchmark suite runs end to end before GPU time is spent on it.

``benchmarks/gpu_suite.py --smoke`` runs every section's code path (the memory option ladder,
SAM3 at four input sizes, the cache benchmarks with their efficiency ratio, the peer
comparison when the official package is importable) on tiny random models on the CPU. It
takes ~30 s of CPU time (more on a loaded 2-core box), hence ``slow``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripts_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_smoke_prints_every_section() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    # memory: every rung of the ladder ran for both models (8-bit only with bitsandbytes)
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    base = "bf16+ckpt+8bit" if bnb else "bf16+ckpt"
    for option in ("fp32", "bf16", "bf16+ckpt", f"{base}+frozen_text+frozen_vision"):
        assert f"sam3-tiny  {option} " in out, option
    assert f"sam2-tiny  {base}+frozen_vision " in out
    # a frozen text encoder leaves fewer parameters trainable than the full fine-tune
    trainable = {
        line.split()[1]: float(line.split("trainable")[1].split()[0])
        for line in out.splitlines()
        if line.startswith("sam3-tiny ")
    }
    assert trainable[f"{base}+frozen_text"] < trainable["bf16+ckpt"]
    # resolution: the four sizes trained and evaluated
    for res in (112, 98, 84, 70):
        assert f"sam3@{res}: train step" in out, res
    # cache: both efficiency ratios, as finite numbers
    for name in ("cache_efficiency", "cache_efficiency_sam3"):
        (line,) = [ln for ln in out.splitlines() if ln.startswith(f"RATIO {name} ")]
        assert float(line.split()[2]) > 0
    # peer: run or said why not
    assert "peer_sam2" in out
    assert "gpu_suite done" in out


def test_demo_spread_forgetting_prints_both_tables(tmp_path, monkeypatch, capsys) -> None:
    """``demo_spread.py --forgetting``: per seed, the recipe's eval_results.json and
    demo_forgetting's forgetting_results.json become one orchard and one held-out table with
    before, each seed, mean and sd. The two subprocesses are replaced by writers of what they
    write (the real ones are the demos: minutes each)."""
    spread = load_script("demo_spread", "benchmarks")
    after = {0: 0.2, 1: 0.4}

    def fake_run(cmd, cwd, check, stdout):
        if "scripts/demo_forgetting.py" in cmd:
            run = Path(cmd[-1])
            seed = int(run.name.rsplit("seed", 1)[1])
            held = {
                "num_images": 32,
                "num_objects": 254,
                "heldout_seed": 1,
                "before": {"cgF1": 0.09, "concept_recall": 0.43},
                "after": {"cgF1": after[seed] / 4, "concept_recall": after[seed]},
            }
            (run / "forgetting_results.json").write_text(json.dumps(held))
        else:
            out = Path(cmd[cmd.index("--output_dir") + 1])
            seed = int(cmd[cmd.index("--seed") + 1])
            out.mkdir(parents=True)
            metrics = {f"eval_{k}": after[seed] for k in spread.DEMOS["sam3"][2]}
            metrics.update({f"initial_eval_{k}": 0.0 for k in spread.DEMOS["sam3"][2]})
            (out / "eval_results.json").write_text(json.dumps(metrics))

    monkeypatch.setattr(spread.subprocess, "run", fake_run)
    argv = ["demo_spread.py", "--family", "sam3", "--seeds", "0", "1", "--forgetting"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path)])
    spread.main()
    out = capsys.readouterr().out
    orchard, held = out.split("held-out shapes (forgetting): 32 images, 254 objects, seed 1")
    assert "cgF1 | 0.000 | 0.200 | 0.400 | 0.300 | 0.141 | 0.200 | 0.400" in orchard
    assert "cgF1 | 0.090 | 0.050 | 0.100 | 0.075 | 0.035 | 0.050 | 0.100" in held
    assert "concept_recall | 0.430 | 0.200 | 0.400 | 0.300 | 0.141" in held
