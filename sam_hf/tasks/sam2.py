"""SAM2 for the trainer: prompted instance masks (MinneApple and friends).

Which model (:func:`~sam_hf.models.sam2.build_sam2`), training module
(:class:`~sam_hf.models.sam2_training.Sam2ForTraining`), data views
(:mod:`sam_hf.data.views`), collator (:class:`~sam_hf.data.collate.Sam2Collator`),
evaluation records and metrics (:mod:`sam_hf.metrics.records`) and overlays
(:mod:`sam_hf.data.overlays`) make up SAM2's fine-tune.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sam_hf.data.collate import Sam2Collator
from sam_hf.data.overlays import sam2_overlay_items
from sam_hf.data.prepare import load_splits
from sam_hf.data.replay import with_replay
from sam_hf.data.transforms import SegmentationDataset
from sam_hf.data.views import eval_view, subset, train_view
from sam_hf.features.cache import use_cache
from sam_hf.features.dataset import CachedEmbeddingCollator
from sam_hf.metrics.records import sam2_metrics, sam2_records
from sam_hf.models.sam2 import build_sam2, export_official
from sam_hf.models.sam2_training import Sam2ForTraining
from sam_hf.tasks.base import TransformersTask


class Sam2Task(TransformersTask):
    """SAM2 with geometric prompts on instance masks (MinneApple and friends)."""

    family = "sam2"
    synthetic_view = "minneapple"

    def build_base(self, cfg: Any) -> tuple[torch.nn.Module, Any]:
        return build_sam2(cfg)

    def wrap(self, model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
        return Sam2ForTraining(model, cfg)

    def save_pretrained(
        self, module: torch.nn.Module, processor: Any, out_dir: Path, cfg: Any
    ) -> None:
        """The transformers folder; with ``export_official``, also ``model.pt`` (official)."""
        super().save_pretrained(module, processor, out_dir, cfg)
        if getattr(cfg, "export_official", False):
            export_official(module.model, cfg, out_dir / "model.pt")

    def build_datasets(
        self, cfg: Any, processor: Any
    ) -> tuple[SegmentationDataset, SegmentationDataset]:
        dd = load_splits(cfg)
        main = subset(dd[cfg.train_split], cfg.max_train_samples)
        train = train_view(cfg, processor, with_replay(cfg, main))
        evals = eval_view(cfg, processor, subset(dd[cfg.eval_split], cfg.max_eval_samples))
        self.cache_on = self.module is not None and use_cache(cfg, self.module.model)
        if not self.cache_on:
            return train, evals
        return self.cached(train, cfg, processor), self.cached(evals, cfg, processor)

    def collator(self, cfg: Any, train: bool) -> Any:
        inner = Sam2Collator(cfg, train=train)
        return CachedEmbeddingCollator(inner) if self.cache_on else inner

    def eval_records(self, predictions: list[dict]) -> list[dict]:
        """Per image: per-object IoU, Dice and Boundary F1 at the original resolution."""
        return sam2_records(predictions)

    def overlay_items(
        self, samples: list[dict], preds: list[dict], processor: Any, cfg: Any
    ) -> list[dict]:
        """Images at original size with predicted vs true instance masks, for trackers."""
        ip = processor.image_processor
        return sam2_overlay_items(samples, preds, ip.image_mean, ip.image_std)

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        """Means over every evaluated object (not over images), plus the object count."""
        return sam2_metrics(records)
