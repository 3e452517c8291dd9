"""Shared pieces of tests that run a recipe end to end and compare two runs step by step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from accelerate.state import AcceleratorState


def recipe_argv(yaml: Path, values: dict[str, Any]) -> list[str]:
    """``--config yaml --key value ...`` as a recipe's ``main(argv)`` takes it."""
    out = ["--config", str(yaml)]
    for k, v in values.items():
        out += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
    return out


def record_training_losses(monkeypatch: pytest.MonkeyPatch, module_cls: type) -> list[float]:
    """A list that receives the loss of every training-mode forward of ``module_cls``, in order
    (the trainer's own logging rounds and averages; comparisons need the exact values)."""
    losses: list[float] = []
    original = module_cls.forward

    def forward(self, batch):
        out = original(self, batch)
        if self.training:
            losses.append(float(out["loss"].detach()))
        return out

    monkeypatch.setattr(module_cls, "forward", forward)
    return losses


def reset_accelerate_state() -> None:
    """Accelerate keeps one process-wide state: a run with another mixed precision needs it
    rebuilt (and the next test needs it reset again)."""
    AcceleratorState._reset_state(reset_partial_state=True)


class ForwardCalls:
    """Counts the forward calls of every instance of ``cls`` (e.g. an image encoder that a
    cached run must not run)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
        self.n = 0
        original = cls.forward

        def counted(module, *args, **kwargs):
            self.n += 1
            return original(module, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counted)
