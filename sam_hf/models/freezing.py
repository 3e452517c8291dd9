"""What trains and what is frozen: the freeze flags, and the checks that rely on them.

The freeze flags decide which parts of SAM2 / SAM3 get gradients. Two other stages depend on
the answer: a frozen encoder runs without autograd (no activations kept), and the embedding
cache (:mod:`sam_hf.features`) may stand in for an encoder only while nothing inside it
trains -- a LoRA adapter included, which is why the checks read ``requires_grad`` of the
built model rather than the config. These facts live here, with the models, so the cache
and the training modules ask one place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def set_requires_grad(module: nn.Module | None, flag: bool) -> None:
    """Freeze (``flag=False``) or unfreeze every parameter of ``module``."""
    if module is None:
        return
    for p in module.parameters():
        p.requires_grad_(flag)


# ------------------------------------------------------------------------------ freeze flags


def apply_sam2_freezing(model: nn.Module, cfg: Any) -> None:
    """``freeze_image_encoder`` / ``freeze_prompt_encoder`` / ``freeze_mask_decoder``.

    The image encoder includes ``no_memory_embedding`` (a learned offset added to the image
    embedding), so a frozen encoder gives fixed image embeddings. ``mask_decoder.conv_s0/s1``
    (applied to the high-resolution features) belong to the mask decoder, as in the module tree.
    """
    if cfg.freeze_image_encoder:
        set_requires_grad(model.vision_encoder, False)
        model.no_memory_embedding.requires_grad_(False)
    if cfg.freeze_prompt_encoder:
        set_requires_grad(model.prompt_encoder, False)
    if cfg.freeze_mask_decoder:
        set_requires_grad(model.mask_decoder, False)


def check_freeze_tracker(cfg: Any) -> None:
    """``freeze_tracker: false`` is an error: SAM3's tracker is not part of what trains."""
    if not getattr(cfg, "freeze_tracker", True):
        raise ValueError(
            "freeze_tracker: false is not supported. SAM3's tracker (the SAM2-style memory "
            "model that propagates masks through video) is not trained here: the SAM3 "
            "fine-tuning guide trains the image detector only, and transformers' Sam3Model "
            "-- the model this recipe trains and saves -- does not even contain the tracker "
            "(its tracker_model.* / tracker_neck.* weights are dropped on load). Set "
            "freeze_tracker: true."
        )


def apply_sam3_freezing(model: nn.Module, cfg: Any) -> None:
    """Apply ``freeze_vision_encoder`` / ``freeze_text_encoder`` (and check ``freeze_tracker``).

    The text encoder includes ``text_projection`` (CLIP width -> DETR width), as in the
    official SAM3 where that projection sits inside the text encoder module.
    """
    check_freeze_tracker(cfg)
    set_requires_grad(model, True)
    if getattr(cfg, "freeze_vision_encoder", False):
        set_requires_grad(model.vision_encoder, False)
    if getattr(cfg, "freeze_text_encoder", False):
        set_requires_grad(model.text_encoder, False)
        set_requires_grad(model.text_projection, False)


# ------------------------------------------------------------------ what the cache relies on


def image_cache_parts(model: nn.Module) -> list[Any]:
    """What the cached image features are a function of: the vision encoder, then any loose
    parameters -- SAM2 adds its ``no_memory_embedding`` to the features; SAM3's features are
    the vision encoder's output alone."""
    parts: list[Any] = [model.vision_encoder]
    extra = getattr(model, "no_memory_embedding", None)
    if isinstance(extra, torch.Tensor):
        parts.append(extra)
    return parts


def encoder_is_trainable(model: nn.Module) -> bool:
    """Whether any parameter feeding the cached image features gets gradients (LoRA included)."""
    encoder, *extra = image_cache_parts(model)
    return any(p.requires_grad for p in [*encoder.parameters(), *extra])


def check_encoder_frozen(model: nn.Module) -> None:
    """Raise when a batch carries cached image features but the encoder could train: the
    cached features would stand in for it, and it would silently not train."""
    if torch.is_grad_enabled() and encoder_is_trainable(model):
        raise RuntimeError(
            "The batch carries cached image embeddings, but the image encoder is trainable: it "
            "would silently not train. Freeze it or turn the cache off."
        )


def text_encoder_is_trainable(model: nn.Module) -> bool:
    """Whether SAM3's text encoder or its projection gets gradients (LoRA included)."""
    return any(
        p.requires_grad for m in (model.text_encoder, model.text_projection) for p in m.parameters()
    )


def check_text_encoder_frozen(model: nn.Module) -> None:
    """Raise when phrase features come from the cache but the text encoder could train."""
    if torch.is_grad_enabled() and text_encoder_is_trainable(model):
        raise RuntimeError(
            "Phrase features are cached, but the text encoder is trainable: it would "
            "silently not train. Freeze it or turn the cache off."
        )
