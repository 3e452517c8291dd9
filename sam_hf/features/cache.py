"""Whether a run trains from cached features: decided from the config and the built model.

The config alone decides most of it (:mod:`sam_hf.config.cache_settings`, checked when the
config is parsed); the built model is checked again here, because a LoRA pattern can reach
into an encoder in ways the config-time check cannot see (:mod:`sam_hf.models.freezing`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sam_hf.config.cache_settings import cache_blockers, cache_mode, text_cache_blockers
from sam_hf.config.precision import mixed_precision
from sam_hf.features.errors import FeatureCacheError
from sam_hf.models.freezing import encoder_is_trainable, text_encoder_is_trainable

logger = logging.getLogger("sam_hf")


def use_cache(cfg: Any, model: torch.nn.Module | None = None) -> bool:
    """Decide (and log) whether this run trains from cached image features.

    ``model`` (the built Sam2Model / Sam3Model, possibly peft-wrapped) is checked for trainable
    encoder parameters too, which catches a LoRA pattern the config-time check could not see.
    """
    mode = cache_mode(cfg)
    if mode == "false":
        return False
    blockers = cache_blockers(cfg)
    if not blockers and model is not None and encoder_is_trainable(model):
        blockers = ["the built model's image encoder has trainable parameters (LoRA?)"]
    if blockers and mode == "true":
        raise FeatureCacheError(
            "cache_embeddings: true, but the encoder's features cannot be cached: "
            + "; ".join(blockers)
            + "."
        )
    if blockers:
        logger.info("Embedding cache off (cache_embeddings: auto): %s.", "; ".join(blockers))
        return False
    return True


def use_text_cache(cfg: Any, model: torch.nn.Module | None = None) -> bool:
    """Decide (and log) whether SAM3 reads its phrase features from the cache.

    On whenever ``cache_embeddings`` is not ``false`` and the text side is frozen: the features
    are small and a frozen text encoder gives every phrase the same features forever.
    """
    if cache_mode(cfg) == "false":
        return False
    blockers = text_cache_blockers(cfg)
    if not blockers and model is not None and text_encoder_is_trainable(model):
        blockers = ["the built model's text encoder has trainable parameters (LoRA?)"]
    if blockers:
        logger.info("Phrase feature cache off: %s.", "; ".join(blockers))
        return False
    return True


def autocast_dtype(cfg: Any) -> torch.dtype | None:
    """The autocast dtype the run's forward uses (None in float32), which the cache fills under."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision(cfg))
