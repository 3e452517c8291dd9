"""The data order of a run and the loaders that serve it.

Exact resume rests on the order: epoch ``e`` is a permutation seeded by ``(seed, e)``
(:class:`EpochShuffleSampler`, the same on every rank and after a resume) and every sample's
augmentation and prompts by ``(seed, e, index)`` (see ``sam_hf.data.transforms``), so a
checkpoint only needs to know how many micro-batches of the current epoch were consumed.
:func:`schedule_length` turns epochs or ``max_steps`` into optimizer steps as Accelerate
counts them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from sam_hf.config import ConfigError
from sam_hf.training.task import Task


class EpochShuffleSampler(Sampler[int]):
    """A permutation of the dataset seeded by ``(seed, epoch)``: the same on every rank and
    after a resume, unlike a sampler that draws from the global RNG."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def build_loaders(
    cfg: Any, task: Task, train_ds: Any, eval_ds: Any
) -> tuple[DataLoader, DataLoader]:
    """The training loader (seeded epoch order, the task's training collator) and the
    evaluation loader (dataset order)."""
    if cfg.per_device_train_batch_size > len(train_ds):
        raise ConfigError(
            f"batch_size {cfg.per_device_train_batch_size} is larger than the training split "
            f"({len(train_ds)} images); lower batch_size or add data."
        )
    train_dl = DataLoader(
        train_ds,
        batch_size=cfg.per_device_train_batch_size,
        sampler=EpochShuffleSampler(len(train_ds), cfg.seed),
        collate_fn=task.collator(cfg, train=True),
        num_workers=cfg.dataloader_num_workers,
        pin_memory=cfg.dataloader_pin_memory,
        drop_last=False,
    )
    eval_dl = DataLoader(
        eval_ds,
        batch_size=cfg.per_device_eval_batch_size or cfg.per_device_train_batch_size,
        shuffle=False,
        collate_fn=task.collator(cfg, train=False),
        num_workers=cfg.dataloader_num_workers,
        pin_memory=cfg.dataloader_pin_memory,
    )
    return train_dl, eval_dl


def schedule_length(cfg: Any, num_train: int, num_processes: int) -> tuple[int, int]:
    """``(optimizer steps, epochs)`` of the run: ``max_steps`` and the epochs it takes, or
    ``num_train_epochs`` and their steps. Accelerate also steps on the last, shorter
    accumulation window of an epoch, so an epoch is ceil(micro-batches / accumulation)."""
    micro_per_epoch = math.ceil(num_train / (cfg.per_device_train_batch_size * num_processes))
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
    if cfg.max_steps > 0:
        return cfg.max_steps, math.ceil(cfg.max_steps / steps_per_epoch)
    return cfg.num_train_epochs * steps_per_epoch, cfg.num_train_epochs
