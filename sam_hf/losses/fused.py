"""SAM2's per-mask focal, dice and IoU, fused: upsampling and reduction in object chunks.

The values and gradients are those of the plain formulas
(:func:`~sam_hf.losses.sam2.sigmoid_focal_loss`, :func:`~sam_hf.losses.sam2.dice_loss` and
:func:`~sam_hf.losses.sam2.actual_iou` on the logits upsampled to the ground truth's size);
what differs is memory. The loss takes the decoder's
low-resolution logits and upsamples them to the ground truth's size itself, a few objects at a
time, reducing each chunk to per-mask sums at once (:class:`_BinaryMaskLosses`). That matters
because these full-resolution maps are the largest tensors of a cached SAM2 step (2 images x 16
objects x 3 masks x 1024^2 floats is 400 MB per intermediate): the plain autograd formulas keep
about ten such intermediates alive for the backward pass and compute gradients for all three
masks although only the best one receives any. The fused backward recomputes the upsampled
logits of just the masks whose loss has a non-zero gradient (the best mask of each present
object) and applies the closed-form derivative of focal and dice loss there. Binary targets
take this path; soft targets fall back to the plain formulas.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

#: Elements (objects x masks x pixels) the fused mask losses process at once. Large enough that
#: per-operation overhead vanishes, small enough that every temporary (4 MB at the default)
#: stays in the CPU's cache and is reused by the allocator -- full-size temporaries of a
#: 1024 px batch are hundreds of MB, and fresh allocations that large are page-faulted in
#: (and zeroed by the kernel) anew by every operation.
CHUNK_ELEMENTS = 1 << 20
#: Largest pixel count whose {0, 1} sums float32 holds exactly (4096 x 4096).
_EXACT_FLOAT_COUNT = 1 << 24


def to_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(k, M, h, w) logits as float32 at ``size``: bilinear, ``align_corners=False`` (SAM2's
    upsampling of its low-resolution masks), or unchanged when already that size."""
    x = logits.float()
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _focal_factor(t: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """Per-pixel class weight ``alpha_t`` for {0, 1} targets (``None``: no weighting)."""
    return (1.0 - alpha) + (2.0 * alpha - 1.0) * t if alpha >= 0 else None


def _chunk_stats(
    x: torch.Tensor, t: torch.Tensor, alpha: float, gamma: float
) -> tuple[torch.Tensor, ...]:
    """Per-mask sums of one chunk: x (k, M, P) logits, t (k, P, 1) {0, 1} float targets.

    With ``nz = x * (1 - 2t)`` (the logit of the wrong class), ``1 - p_t = sigmoid(nz)`` and
    the cross-entropy is ``softplus(nz)``, so the focal loss needs no ``1 - p`` cancellation.
    Target-weighted sums over pixels are batched matrix-vector products (one pass, no
    temporary).
    """
    k, m, p = x.shape
    nz = x * (1.0 - 2.0 * t.view(k, 1, p))
    q = torch.sigmoid(nz)
    elem = F.softplus(nz).mul_(q * q if gamma == 2.0 else q.pow(gamma))
    a = _focal_factor(t, alpha)
    focal = (torch.bmm(elem, a)[..., 0] if a is not None else elem.sum(-1)) / p
    prob = torch.sigmoid(x)
    sum_p = prob.sum(-1)
    sum_pt = torch.bmm(prob, t)[..., 0]
    if p <= _EXACT_FLOAT_COUNT:  # counts of {0, 1} floats are exact integers up to 2**24
        pred = torch.gt(x, 0.0, out=prob)
        sum_pred = pred.sum(-1)
        inter = torch.bmm(pred, t)[..., 0]
    else:
        pred_b = x > 0
        sum_pred = pred_b.sum(-1).float()
        inter = (pred_b & t.view(k, 1, p).bool()).sum(-1).float()
    return focal, sum_p, sum_pt, sum_pred, inter


def _chunk_grad(
    x: torch.Tensor,
    t: torch.Tensor,
    g_focal: torch.Tensor,
    g_dice: torch.Tensor,
    sum_p: torch.Tensor,
    sum_pt: torch.Tensor,
    sum_t: torch.Tensor,
    alpha: float,
    gamma: float,
) -> torch.Tensor:
    """d(g_focal * focal + g_dice * dice)/dx for k single masks: x, t (k, P); the rest (k,).

    focal = mean over pixels of ``alpha_t q^gamma softplus(nz)`` with ``q = sigmoid(nz)``,
    ``nz = s x``, ``s = 1 - 2t``: its derivative is ``alpha_t s q^gamma (gamma (1 - q)
    softplus(nz) + q) / P``. dice = ``1 - (2 S_pt + 1) / (S_p + S_t + 1)`` with p = sigmoid(x):
    ``d dice / dx_i = ((2 S_pt + 1) / den^2 - 2 t_i / den) p_i (1 - p_i)``.
    """
    p_count = x.shape[-1]
    grad = torch.zeros_like(x)
    if bool((g_focal != 0).any()):
        s = 1.0 - 2.0 * t
        nz = x * s
        q = torch.sigmoid(nz)
        inner = F.softplus(nz).mul_(1.0 - q).mul_(gamma).add_(q)
        d = inner.mul_(q * q if gamma == 2.0 else q.pow(gamma)).mul_(s)
        a = _focal_factor(t, alpha)
        if a is not None:
            d.mul_(a)
        grad.add_(d.mul_((g_focal / p_count)[:, None]))
    if bool((g_dice != 0).any()):
        den = sum_p + sum_t + 1.0
        num = 2.0 * sum_pt + 1.0
        prob = torch.sigmoid(x)
        d = t * (-2.0 / den)[:, None] + (num / den.square())[:, None]
        grad.add_(d.mul_(prob * (1.0 - prob)).mul_(g_dice[:, None]))
    return grad


class _BinaryMaskLosses(torch.autograd.Function):
    """(N, M, h, w) logits, (N, H, W) bool targets -> per-mask focal, dice and IoU, (N, M) each.

    The logits are upsampled to the targets' size (unless already that size) chunk by chunk
    and never kept: the backward pass recomputes the upsampled logits of only those masks
    whose focal or dice output receives a non-zero gradient. The IoU (of ``logit > 0``) is
    not differentiable, as in the official loss.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: torch.Tensor,
        targets: torch.Tensor,
        alpha: float,
        gamma: float,
        chunk_elements: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, m = logits.shape[:2]
        size = (int(targets.shape[-2]), int(targets.shape[-1]))
        pixels = size[0] * size[1]
        f32 = {"dtype": torch.float32, "device": logits.device}
        focal, sum_p, sum_pt, sum_pred, inter = (torch.empty(n, m, **f32) for _ in range(5))
        sum_t = targets.flatten(1).sum(-1, dtype=torch.float32)
        per = max(1, chunk_elements // max(1, m * pixels))
        with torch.autocast(logits.device.type, enabled=False):
            for s in range(0, n, per):
                e = min(n, s + per)
                x = to_size(logits[s:e].detach(), size).reshape(e - s, m, pixels)
                t = targets[s:e].reshape(e - s, pixels, 1).float()
                out = _chunk_stats(x, t, alpha, gamma)
                for dst, v in zip((focal, sum_p, sum_pt, sum_pred, inter), out):
                    dst[s:e] = v
        dice = 1.0 - (2.0 * sum_pt + 1.0) / (sum_p + sum_t[:, None] + 1.0)
        union = sum_pred + sum_t[:, None] - inter
        iou = inter / union.clamp(min=1.0)
        ctx.mark_non_differentiable(iou)
        ctx.save_for_backward(logits, targets, sum_p, sum_pt, sum_t)
        ctx.config = (alpha, gamma, chunk_elements, size)
        return focal, dice, iou

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, g_focal: torch.Tensor, g_dice: torch.Tensor, _g_iou: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None, None, None]:
        logits, targets, sum_p, sum_pt, sum_t = ctx.saved_tensors
        alpha, gamma, chunk_elements, size = ctx.config
        grad = torch.zeros_like(logits)
        rows, cols = ((g_focal != 0) | (g_dice != 0)).nonzero(as_tuple=True)
        pixels = size[0] * size[1]
        per = max(1, chunk_elements // max(1, pixels))
        with torch.autocast(logits.device.type, enabled=False):
            for s in range(0, rows.numel(), per):
                r, c = rows[s : s + per], cols[s : s + per]
                low = logits[r, c].detach().float()[:, None]
                with torch.enable_grad():
                    low.requires_grad_(True)
                    x = to_size(low, size)
                gx = _chunk_grad(
                    x.detach().reshape(-1, pixels),
                    targets[r].reshape(-1, pixels).float(),
                    g_focal[r, c].float(),
                    g_dice[r, c].float(),
                    sum_p[r, c],
                    sum_pt[r, c],
                    sum_t[r],
                    alpha,
                    gamma,
                ).view_as(x)
                if x is not low:
                    (gx,) = torch.autograd.grad(x, low, gx)
                grad[r, c] = gx[:, 0].to(grad.dtype)
        return grad, None, None, None, None


def binary_mask_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-mask focal loss, dice loss and actual IoU (each (N, M)) of ``logits`` upsampled to
    the targets' size, for binary targets: the values of :func:`sigmoid_focal_loss`,
    :func:`dice_loss` and :func:`actual_iou` on ``F.interpolate(logits, size, "bilinear")``.

    Args:
        logits: (N, M, h, w) mask logits, at the targets' resolution or lower.
        targets: (N, H, W) bool (or {0, 1}) ground truth, shared by the M masks of an object.
        chunk_elements: elements processed at once (memory bound, not a result change).

    Differentiable with respect to ``logits`` through focal and dice (not IoU).
    """
    if logits.dim() != 4 or targets.dim() != 3 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            "logits must be (N, M, h, w) and targets (N, H, W); got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}."
        )
    return _BinaryMaskLosses.apply(
        logits, targets.bool(), float(alpha), float(gamma), int(chunk_elements)
    )
