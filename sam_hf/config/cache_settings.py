"""Whether the frozen-encoder embedding cache can be used under a config: decided from the
settings alone, before a model exists, so ``cache_embeddings: true`` with a trainable encoder
fails at parse time. ``sam_hf.features`` reads the same decision when it builds the cache.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sam_hf.config.errors import ConfigError

MODES = ("auto", "true", "false")
#: Module names of the image encoders that a LoRA pattern could target (for validation before
#: the model exists; the built model is checked again with its real parameters).
_ENCODER_PROBE_NAMES = {
    "sam2": (
        "vision_encoder.backbone.blocks.0.attn.qkv",
        "vision_encoder.backbone.blocks.0.attn.proj",
        "vision_encoder.backbone.blocks.0.mlp.layers.0",
        "vision_encoder.backbone.patch_embed.projection",
        "vision_encoder.neck.convs.0",
    ),
    "sam3": (
        "vision_encoder.backbone.layers.0.attention.q_proj",
        "vision_encoder.backbone.layers.0.attention.o_proj",
        "vision_encoder.backbone.layers.0.mlp.fc1",
        "vision_encoder.backbone.embeddings.patch_embeddings.projection",
        "vision_encoder.neck.fpn_layers.0.proj1",
    ),
}
#: SAM3's tracker head runs on SAM3's vision encoder (same module names).
_ENCODER_PROBE_NAMES["sam3_tracker"] = _ENCODER_PROBE_NAMES["sam3"]
#: The same for SAM3's text side (the CLIP text encoder and its projection to the DETR width).
_TEXT_PROBE_NAMES = (
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    "text_encoder.text_model.encoder.layers.0.self_attn.out_proj",
    "text_encoder.text_model.encoder.layers.0.mlp.fc1",
    "text_encoder.text_model.embeddings.token_embedding",
    "text_projection",
)
#: The config flag that freezes the cached image encoder, per family.
_FREEZE_FLAG = {
    "sam2": "freeze_image_encoder",
    "sam3": "freeze_vision_encoder",
    "sam3_tracker": "freeze_image_encoder",
}


def cache_mode(cfg: Any) -> str:
    """``cfg.cache_embeddings`` normalised to ``auto`` / ``true`` / ``false`` (or an error)."""
    raw = getattr(cfg, "cache_embeddings", "auto")
    mode = str(raw).strip().lower()
    if mode not in MODES:
        raise ConfigError(f"cache_embeddings: {raw!r} is not allowed; choose auto, true or false.")
    return mode


def _family(cfg: Any) -> str:
    family = getattr(cfg, "family", "sam2")
    return family if family in _FREEZE_FLAG else "sam2"


def _lora_targets(cfg: Any, group: str, probes: Sequence[str]) -> bool:
    if not getattr(cfg, "use_lora", False):
        return False
    regex = getattr(cfg, "lora_target_regex", None)
    if regex:
        try:
            pattern = re.compile(regex)
        except re.error:
            return False  # the LoRA validation reports the bad pattern itself
        return any(pattern.fullmatch(name) for name in probes)
    return group in (getattr(cfg, "lora_target_groups", None) or ())


def lora_targets_encoder(cfg: Any) -> bool:
    """Whether ``cfg``'s LoRA settings put adapters into the image encoder."""
    return _lora_targets(cfg, "vision_encoder", _ENCODER_PROBE_NAMES[_family(cfg)])


def cache_blockers(cfg: Any) -> list[str]:
    """Why the image encoder's features cannot be cached under ``cfg`` (empty: they can)."""
    reasons = []
    flag = _FREEZE_FLAG[_family(cfg)]
    if not getattr(cfg, flag, False):
        reasons.append(f"{flag} is false: the encoder trains, so its features change every step")
    if lora_targets_encoder(cfg):
        reasons.append(
            "LoRA on an encoder whose features are cached: use_lora with vision_encoder in "
            "lora_target_groups (or a lora_target_regex matching vision_encoder modules) trains "
            "the encoder"
        )
    if getattr(cfg, "color_jitter", 0.0) > 0:
        reasons.append(
            f"color_jitter {cfg.color_jitter} > 0 changes the pixels every epoch, so the "
            "features do too (set color_jitter: 0 to cache; hflip_prob is fine)"
        )
    return reasons


def text_cache_blockers(cfg: Any) -> list[str]:
    """Why SAM3's phrase features cannot be cached under ``cfg`` (empty: they can)."""
    reasons = []
    if not getattr(cfg, "freeze_text_encoder", False):
        reasons.append("freeze_text_encoder is false: the text encoder trains")
    if _lora_targets(cfg, "text_encoder", _TEXT_PROBE_NAMES):
        reasons.append("LoRA adapters in the text encoder train it")
    return reasons


def check_cache_settings(cfg: Any) -> None:
    """Config validation: ``cache_embeddings: true`` where caching is impossible is an error.

    ``true`` is about the image features (the expensive part). SAM3's phrase features follow
    along whenever the text encoder is frozen, under ``auto`` and ``true`` alike.
    """
    if cache_mode(cfg) == "true":
        blockers = cache_blockers(cfg)
        if blockers:
            raise ConfigError(
                "cache_embeddings: true, but the encoder's features cannot be cached: "
                + "; ".join(blockers)
                + ". Set cache_embeddings: auto (or false) to train without the cache."
            )
