"""What a model family provides to the trainer: the :class:`Task` protocol.

The trainer knows nothing of SAM2 or SAM3: ``sam_hf.tasks`` implements this protocol for
each family (and tests/toy_task.py for a small conv net), so the loop, checkpoints and
outputs are one code path for all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch


class Task(Protocol):
    """What a model family provides to the trainer (see ``sam_hf.tasks``)."""

    family: str

    def prepare_data(self, cfg: Any) -> None: ...
    def build_model(self, cfg: Any) -> tuple[torch.nn.Module, Any]: ...
    def build_datasets(self, cfg: Any, processor: Any) -> tuple[Any, Any]: ...
    def collator(self, cfg: Any, train: bool) -> Any: ...
    def eval_records(self, predictions: list[dict]) -> list[Any]: ...
    def compute_metrics(self, records: list[Any]) -> dict[str, float]: ...
    def overlay_items(
        self, samples: list[dict], preds: list[dict], processor: Any, cfg: Any
    ) -> list[dict]: ...
    def save_pretrained(
        self, module: torch.nn.Module, processor: Any, out_dir: Path, cfg: Any
    ) -> None: ...
