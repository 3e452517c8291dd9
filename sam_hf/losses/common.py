"""Mask loss formulas shared by the SAM2 and SAM3 losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise sigmoid focal loss (RetinaNet); ``alpha < 0`` disables the class weight."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, start_dim: int = 1) -> torch.Tensor:
    """``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` on sigmoid probabilities, one value per mask;
    the dimensions from ``start_dim`` on are the mask's pixels."""
    prob = logits.sigmoid().flatten(start_dim)
    t = targets.flatten(start_dim)
    return 1 - (2 * (prob * t).sum(-1) + 1) / (prob.sum(-1) + t.sum(-1) + 1)
