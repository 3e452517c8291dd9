"""Model plumbing shared by the SAM2 and SAM3 wrappers: activation checkpointing, tiny init,
parameter counts (freezing is :mod:`sam_hf.models.freezing`)."""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

logger = logging.getLogger(__name__)


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Turn on activation checkpointing block by block; returns how many blocks it covers.

    ``PreTrainedModel.gradient_checkpointing_enable()`` refuses Sam2Model/Sam3Model
    (``supports_gradient_checkpointing = False``), yet their transformer blocks are
    ``GradientCheckpointingLayer``s whose forward already knows how to recompute itself. Setting
    the two attributes it reads on each block gives real activation checkpointing (non-reentrant,
    so frozen inputs and keyword arguments are fine) with unchanged gradients.
    """
    fn = functools.partial(checkpoint, use_reentrant=False)
    n = 0
    for m in model.modules():
        if isinstance(m, GradientCheckpointingLayer):
            m.gradient_checkpointing = True
            m._gradient_checkpointing_func = fn
            n += 1
    if n == 0:
        raise ValueError(
            f"{type(model).__name__} has no GradientCheckpointingLayer blocks; "
            "set gradient_checkpointing: false for this model."
        )
    return n


@torch.no_grad()
def reinit_for_small_widths(model: nn.Module) -> None:
    """Re-initialise Linear/Conv layers with PyTorch's fan-in defaults.

    transformers draws every Linear/Conv weight from N(0, 0.02) whatever its width; at the tiny
    widths used for tests and CPU demos that leaves activations vanishing and the model nearly
    blind (a tiny SAM3's presence loss sat at ln 2 for 1,000+ steps). ``reset_parameters()``
    scales by fan-in instead. Only for models trained from random weights, never for
    pretrained ones.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d):
            m.reset_parameters()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
