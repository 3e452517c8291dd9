"""SAM3 for the trainer: every instance of a noun phrase, negative phrases included.

Which model (:func:`~sam_hf.models.sam3.build_sam3`), training module
(:class:`~sam_hf.models.sam3.Sam3ForTraining`), data views and evaluation pairs
(:mod:`sam_hf.data.views`, the pairs ``scripts/evaluate.py sam3`` scores too), query
collator (:class:`~sam_hf.data.queries.Sam3Collator`), image and phrase caches
(:mod:`sam_hf.features.fill`), evaluation records and metrics (:mod:`sam_hf.metrics.records`)
and overlays (:mod:`sam_hf.data.overlays`) make up SAM3's fine-tune.
"""

from __future__ import annotations

from typing import Any

import datasets
import torch

from sam_hf.data.overlays import sam3_overlay_items
from sam_hf.data.prepare import load_splits
from sam_hf.data.queries import Sam3Collator
from sam_hf.data.replay import with_replay
from sam_hf.data.transforms import SegmentationDataset
from sam_hf.data.views import (
    check_noun_phrases,
    sam3_eval_pairs,
    sam3_training_split,
    subset,
    train_view,
)
from sam_hf.features.cache import use_cache, use_text_cache
from sam_hf.features.dataset import CachedEmbeddingCollator
from sam_hf.features.fill import cached_phrase_features
from sam_hf.features.store import PhraseFeatures
from sam_hf.metrics.records import sam3_metrics, sam3_records
from sam_hf.models.sam3 import Sam3ForTraining, build_sam3
from sam_hf.tasks.base import TransformersTask


class Sam3Task(TransformersTask):
    """SAM3 concept segmentation: every instance of a noun phrase, negatives included."""

    family = "sam3"
    synthetic_view = "coco_text"

    def __init__(self) -> None:
        super().__init__()
        self.vocab: Any = None
        self.score_threshold = 0.5  # cfg.score_threshold, set by ``build_datasets``
        #: The evaluation collator of :func:`~sam_hf.data.views.sam3_eval_pairs` (set by
        #: ``build_datasets``).
        self.eval_collator: Any = None

    def build_base(self, cfg: Any) -> tuple[torch.nn.Module, Any]:
        return build_sam3(cfg)

    def wrap(self, model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
        return Sam3ForTraining(model, cfg)

    def build_datasets(
        self, cfg: Any, processor: Any
    ) -> tuple[SegmentationDataset, SegmentationDataset]:
        dd = load_splits(cfg)
        train_split = sam3_training_split(dd, cfg)
        eval_split = subset(dd[cfg.eval_split], cfg.max_eval_samples)
        mixed = with_replay(cfg, train_split)  # the training images, replay appended
        check_noun_phrases(mixed, cfg.train_split, cfg.noun_phrase_from_category)
        check_noun_phrases(eval_split, cfg.eval_split, cfg.noun_phrase_from_category)
        # the evaluation pairs, exactly as scripts/evaluate.py sam3 builds them
        evals, self.eval_collator = sam3_eval_pairs(cfg, processor, eval_split, train_split)
        # negatives for an image are drawn from the phrases of the other training images (the
        # vocabulary the evaluation pairs drew from)
        self.vocab = self.eval_collator.vocab
        self.tokenizer = processor.tokenizer
        self.score_threshold = cfg.score_threshold
        train = train_view(cfg, processor, mixed)
        if self.module is None:
            return train, evals
        model = self.module.model
        if use_text_cache(cfg, model):
            self.module.text_cache = self.cached_phrases(cfg, processor, [mixed, eval_split])
        self.cache_on = use_cache(cfg, model)
        if not self.cache_on:
            return train, evals
        return self.cached(train, cfg, processor), self.cached(evals, cfg, processor)

    def cached_phrases(
        self, cfg: Any, processor: Any, splits: list[datasets.Dataset]
    ) -> PhraseFeatures:
        """The frozen text encoder's features of every phrase the queries can draw from these
        splits (see :func:`~sam_hf.features.fill.cached_phrase_features`)."""
        assert self.module is not None
        return cached_phrase_features(cfg, processor, self.module.model, splits, self.vocab)

    def collator(self, cfg: Any, train: bool) -> Any:
        """Training queries, or the evaluation pairs of
        :func:`~sam_hf.data.views.sam3_eval_pairs` (made by :meth:`build_datasets`, which must
        run first)."""
        if train:
            inner = Sam3Collator(cfg, self.vocab, self.tokenizer, train=True)
        elif self.eval_collator is None:
            raise RuntimeError("Sam3Task.collator(train=False) needs build_datasets first.")
        else:
            inner = self.eval_collator
        return CachedEmbeddingCollator(inner) if self.cache_on else inner

    def eval_records(self, predictions: list[dict]) -> list[dict]:
        """Per image, every (image, phrase) pair with masks as RLE (small to gather)."""
        return sam3_records(predictions, self.score_threshold)

    def overlay_items(
        self, samples: list[dict], preds: list[dict], processor: Any, cfg: Any
    ) -> list[dict]:
        """Per image: kept predictions (score >= threshold) of its positive phrases vs their
        ground truth, labelled with the phrase, so a wrong concept shows as a wrong label."""
        ip = processor.image_processor
        return sam3_overlay_items(samples, preds, ip.image_mean, ip.image_std, cfg.score_threshold)

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        """SAM3's metrics over every gathered pair (see :func:`sam_hf.metrics.records.sam3_metrics`)."""
        return sam3_metrics(records)
