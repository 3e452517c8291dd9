"""Safe loading, no remote code, and a full output disk: the checks a long GPU run relies on."""

from __future__ import annotations

import re
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from toy_task import ToyTask

from sam_hf.config import ConfigError, Sam2Config, parse_args
from sam_hf.training.loop import train
from sam_hf.training.startup import check_output_dir

ROOT = Path(__file__).resolve().parents[1]


def test_resume_loads_nothing_through_pickle(tmp_path, monkeypatch):
    """Model weights come from safetensors; optimizer/scheduler/RNG states through
    torch.load(weights_only=True); the trainer's own state is JSON."""
    args = [
        "--output_dir",
        str(tmp_path),
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "3",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    ]
    train(parse_args(Sam2Config, args), ToyTask())
    calls = []
    real_load = torch.load

    def spy(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real_load(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    train(
        parse_args(Sam2Config, [*args, "--max_steps", "4", "--resume_from_checkpoint", "true"]),
        ToyTask(),
    )
    assert calls, "resume loaded no state at all"
    assert all(c is True for c in calls), calls
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "model.safetensors").is_file() and not list(ckpt.glob("pytorch_model*.bin"))


def test_no_code_sets_trust_remote_code():
    offenders = []
    for f in [
        *ROOT.glob("sam_hf/**/*.py"),
        *ROOT.glob("scripts/**/*.py"),
        *ROOT.glob("recipes/*.py"),
    ]:
        if re.search(r"trust_remote_code\s*=\s*True", f.read_text()):
            offenders.append(str(f))
    assert offenders == []


def test_full_output_disk_fails_before_training(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    with pytest.raises(ConfigError, match="has only 1 MB free.*another --output_dir"):
        check_output_dir(tmp_path / "run")
