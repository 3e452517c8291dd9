"""What the SAM2 and SAM3 tasks share: the steps of a transformers model family, in order.

A task is the trainer's view of a family (:class:`~sam_hf.training.task.Task`): get the data
ready, build the model, wrap it for training, and export a plain transformers folder. Each step
calls the stage that does the work (:mod:`sam_hf.data.prepare`, :mod:`sam_hf.models.finetune`,
:mod:`sam_hf.features.fill`); the families only say which model, wrapper and data view.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sam_hf.data.prepare import load_splits, prepare_synthetic
from sam_hf.data.replay import prepare_replay
from sam_hf.data.transforms import SegmentationDataset
from sam_hf.data.views import subset
from sam_hf.features.dataset import CachedEmbeddingDataset
from sam_hf.features.fill import cached_image_dataset
from sam_hf.models.finetune import load_finetuned_weights, maybe_lora, save_finetuned
from sam_hf.training.task import Task

logger = logging.getLogger("sam_hf")


class TransformersTask(Task):
    """Data preparation, model building, the image cache and export, shared by the families.

    A family sets ``family`` (the transformers ``model_type``), ``synthetic_view`` (how the
    synthetic orchard is read: :func:`~sam_hf.data.prepare.prepare_synthetic`) and provides
    ``build_base`` (model and processor) and ``wrap`` (the training module).
    """

    family = ""
    synthetic_view = ""

    def __init__(self) -> None:
        #: The training module, kept by :meth:`build_model`: ``build_datasets`` fills the
        #: embedding cache with its frozen encoder.
        self.module: torch.nn.Module | None = None
        #: Whether the datasets carry cached image features (set by ``build_datasets``).
        self.cache_on = False

    def build_base(self, cfg: Any) -> tuple[torch.nn.Module, Any]:
        raise NotImplementedError

    def wrap(self, model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
        raise NotImplementedError

    def prepare_data(self, cfg: Any) -> None:
        prepare_synthetic(cfg, view=self.synthetic_view)
        dd = load_splits(cfg)  # a wrong path or split fails here, before the model is built
        prepare_replay(cfg, len(subset(dd[cfg.train_split], cfg.max_train_samples)))

    def cached(self, ds: SegmentationDataset, cfg: Any, processor: Any) -> CachedEmbeddingDataset:
        """``ds`` with its frozen-encoder features attached (see
        :func:`~sam_hf.features.fill.cached_image_dataset`)."""
        assert self.module is not None
        return cached_image_dataset(ds, cfg, processor, self.family, self.module)

    def save_pretrained(
        self, module: torch.nn.Module, processor: Any, out_dir: Path, cfg: Any
    ) -> None:
        """A plain transformers folder (see :func:`~sam_hf.models.finetune.save_finetuned`)."""
        save_finetuned(module.model, processor, out_dir, cfg)

    def build_model(self, cfg: Any) -> tuple[torch.nn.Module, Any]:
        """The training module: model (+ ``init_from`` weights, then LoRA) inside its wrapper."""
        model, processor = self.build_base(cfg)
        if cfg.init_from:
            self.load_weights(model, cfg.init_from)
            logger.info(
                "Initialised weights from %s (fresh optimizer and schedule).", cfg.init_from
            )
        self.module = self.wrap(maybe_lora(model, cfg, self.family), cfg)
        return self.module, processor

    def load_weights(self, model: torch.nn.Module, path: str) -> None:
        """Weights of an earlier fine-tune (a final/ or best/ folder) into a fresh model."""
        load_finetuned_weights(model, path, self.family)
