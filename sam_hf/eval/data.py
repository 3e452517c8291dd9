"""The evaluated images: a prepared split, the same first images for every model, batches.

Every model of an evaluation reads the same images of one split of a prepared
``DatasetDict`` folder (written by ``scripts/prepare_*``), in order, one batch at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader, Dataset

from sam_hf.eval.sources import EvaluationError


def load_split(data_dir: str | os.PathLike, split: str) -> tuple[datasets.Dataset, Any]:
    """One split of a prepared DatasetDict folder, and the whole DatasetDict (for the vocab)."""
    path = Path(data_dir)
    if not path.exists():
        raise EvaluationError(
            f"--data {path} does not exist. Prepare a split with scripts/prepare_mineapple.py, "
            "scripts/prepare_coco_text.py or scripts/make_synthetic_orchard.py first."
        )
    dd = datasets.load_from_disk(str(path))
    if isinstance(dd, datasets.Dataset):
        return dd, datasets.DatasetDict({split: dd})
    if split not in dd:
        raise EvaluationError(f"{path} has splits {sorted(dd)}; --split {split!r} is not one.")
    return dd[split], dd


def phrase_coverage(ds: datasets.Dataset) -> dict[str, int]:
    """How many (non-crowd) objects carry a noun phrase, and how many fall back to the category."""
    with_phrase = without = 0
    for row in ds.select_columns(["objects"]):
        for obj in row["objects"]:
            if obj.get("iscrowd"):
                continue
            if str(obj.get("noun_phrase") or "").strip():
                with_phrase += 1
            else:
                without += 1
    return {"objects": with_phrase + without, "with_phrase": with_phrase, "category": without}


def select_images(ds: datasets.Dataset, max_images: int) -> datasets.Dataset:
    """The first ``max_images`` images (all when 0): the same images for every model."""
    return ds.select(range(min(max_images, len(ds)))) if max_images > 0 else ds


def sam3_vocab_split(dd: Any, split: str, train_split: str = "train") -> str:
    """Where SAM3's vocabulary negatives come from: the training split, as in training (the
    evaluated split itself when the data has no such split)."""
    return train_split if train_split in dd else split


def _identity(samples: list) -> list:
    return samples


def sample_loader(ds: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    """Batches of samples in dataset order, as lists (each protocol collates them itself)."""
    return DataLoader(
        ds, batch_size=batch_size, shuffle=False, collate_fn=_identity, num_workers=num_workers
    )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a batch onto ``device``; per-image lists (original masks) stay on the CPU."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
