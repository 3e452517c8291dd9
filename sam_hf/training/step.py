"""One optimizer step, in the shape of lerobot's ``update_policy``.

:func:`training_step` takes one micro-batch inside ``accelerator.accumulate``: forward under
autocast, backward, and, when gradients sync, clipping, the optimizer and scheduler steps.
A :class:`StepWindow` collects what the micro-batches of one accumulation window report
(losses, loss terms, samples, the collators' counters), so the step's stats describe the
whole window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from sam_hf.training.optim import is_plateau

#: Per-batch counts the collators report; summed over the run into the train results.
COUNTER_KEYS = ("num_skipped_empty", "num_empty_phrases", "num_truncated")


@dataclass
class StepWindow:
    """The micro-batches of one accumulation window, until its optimizer step."""

    losses: list[float] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=dict)
    samples: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    bad: bool = False  # a non-finite loss on some rank: the window's step is voided
    bad_ids: list = field(default_factory=list)

    def add(self, batch: dict, out: dict, loss: torch.Tensor, finite: bool) -> None:
        if not finite:
            self.bad = True
            self.bad_ids.extend(batch.get("image_ids", []))
        for k, v in out.get("terms", {}).items():
            self.terms.setdefault(k, []).append(float(v))
        self.losses.append(float(loss.detach()))
        self.samples += len(batch.get("image_ids", ()))
        for k, v in batch.items():
            if k in COUNTER_KEYS:
                self.counts[k] = self.counts.get(k, 0) + int(v)

    def reset(self) -> None:
        """Empty again, for the next window."""
        self.__dict__.update(vars(StepWindow()))

    def stats(self) -> dict[str, Any]:
        """Mean loss and loss terms of the window (``loss_<term>``), samples and counts."""
        stats: dict[str, Any] = {"loss": sum(self.losses) / len(self.losses)}
        for k, v in self.terms.items():
            stats[f"loss_{k}" if not k.startswith("loss") else k] = sum(v) / len(v)
        stats["samples"] = self.samples
        stats["counts"] = self.counts
        return stats


def _agree(accelerator: Accelerator, loss: torch.Tensor, stop: bool) -> tuple[bool, bool]:
    """(every rank's loss is finite, some rank asked to stop): one all-reduce."""
    flags = torch.stack(
        [
            torch.isfinite(loss.detach()).float().reshape(()),
            torch.tensor(float(stop), device=loss.device),
        ]
    )
    flags = accelerator.reduce(flags, reduction="sum").tolist()
    return bool(flags[0] == accelerator.num_processes), flags[1] > 0


def _optimizer_step(
    accelerator: Accelerator, module: torch.nn.Module, optimizer: Any, scheduler: Any, cfg: Any
) -> float | None:
    """Clip, step the optimizer and the schedule, clear the gradients; the grad norm."""
    grad_norm = None
    if cfg.max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
    optimizer.step()
    # plateau steps on the eval metric instead; an fp16 step skipped by the grad scaler
    # leaves the schedule where it is
    if not is_plateau(scheduler) and not accelerator.optimizer_step_was_skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return None if grad_norm is None else float(grad_norm)


def training_step(
    accelerator: Accelerator,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: dict,
    cfg: Any,
    window: StepWindow,
    stop: bool = False,
) -> dict | None:
    """One micro-batch; performs the optimizer step when gradients sync.

    Returns the step's stats when an optimizer step was taken (or skipped for a non-finite
    loss), ``None`` for a micro-batch that only accumulated. A non-finite loss on ANY rank skips
    the backward on every rank (they must agree or DDP's all-reduce hangs) and voids the whole
    accumulation window, so a NaN never reaches the weights or AdamW's moments. ``stop`` (this
    rank received SIGTERM) travels in the same all-reduce: ``stats["stop"]`` is true on every
    rank when any rank asked to stop, so all of them save the same checkpoint and stop together.
    """
    with accelerator.accumulate(module):
        with accelerator.autocast():
            out = module(batch)
        loss = out["loss"]
        all_finite, stop_any = _agree(accelerator, loss, stop)
        if all_finite:
            accelerator.backward(loss)
        window.add(batch, out, loss, all_finite)
        if not accelerator.sync_gradients:
            return None
        stats: dict[str, Any] = {"nonfinite": window.bad, "bad_ids": window.bad_ids}
        stats["stop"] = stop_any
        if window.bad:
            optimizer.zero_grad(set_to_none=True)
        else:
            grad_norm = _optimizer_step(accelerator, module, optimizer, scheduler, cfg)
            if grad_norm is not None:
                stats["grad_norm"] = grad_norm
        stats.update(window.stats())
        window.reset()
        return stats
