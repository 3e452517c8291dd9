"""Evaluation during training: every image of the evaluation split once, on every rank layout.

Each rank predicts its share, turns the predictions into small picklable records (the task's
``eval_records``) and ``gather_for_metrics`` collects them, dropping the samples the
distributed sampler repeated; the task scores the records (``compute_metrics``).
:func:`log_eval_images` sends a few validation images with predicted and true masks to the
trackers.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader

from sam_hf.data.overlays import log_overlays
from sam_hf.training.task import Task


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, module: torch.nn.Module, loader: DataLoader, task: Task
) -> dict:
    """Predict on every evaluation image once (no duplicates across ranks) and score.

    Each rank turns its predictions into small picklable records (RLE masks, per-object
    values) and ``gather_for_metrics`` collects them, dropping the samples that the
    distributed sampler repeated to even out the last batch.
    """
    was_training = module.training
    module.eval()
    inner = accelerator.unwrap_model(module)
    records: list[Any] = []
    for batch in loader:
        with accelerator.autocast():
            preds = inner.predict(batch)
        records.extend(
            accelerator.gather_for_metrics(task.eval_records(preds), use_gather_object=True)
        )
    module.train(was_training)
    return task.compute_metrics(records) if records else {}


@torch.no_grad()
def log_eval_images(
    accelerator: Accelerator,
    module: torch.nn.Module,
    task: Task,
    eval_ds: Any,
    processor: Any,
    cfg: Any,
    step: int,
) -> None:
    """Log the first ``log_images`` validation images with predicted and true masks."""
    if not cfg.log_images or not accelerator.is_main_process or not accelerator.trackers:
        return
    samples = [eval_ds[i] for i in range(min(cfg.log_images, len(eval_ds)))]
    batch = send_to_device(task.collator(cfg, train=False)(samples), accelerator.device)
    inner = accelerator.unwrap_model(module)
    was_training = inner.training
    inner.eval()
    with accelerator.autocast():
        preds = inner.predict(batch)
    inner.train(was_training)
    log_overlays(accelerator, task.overlay_items(samples, preds, processor, cfg), step)
