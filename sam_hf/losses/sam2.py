"""The SAM2 training loss, term for term as the official ``training/loss_fns.py``.

Official recipe (``MultiStepMultiMasksAndIous`` with the sam2.1 training config), which this
module reproduces:

- per predicted mask: sigmoid focal loss averaged over pixels, dice loss with +1 smoothing in
  numerator and denominator, and an IoU-prediction loss (L1 or MSE) against the *actual* IoU
  of the thresholded mask (``logit > 0``) with the ground truth;
- with multimask output (3 masks), focal and dice are back-propagated only through the mask
  with the lowest ``w_focal * focal + w_dice * dice``; the IoU head is supervised on all
  masks (``supervise_all_iou: true``), averaged over them;
- mask, dice and IoU terms are multiplied by "object present" (ground truth non-empty); the
  object-score head gets a plain BCE (focal with alpha -1, gamma 0) on every object;
- every term is summed over objects and divided by the number of objects in the batch, then
  summed over prediction steps (initial prompt + each correction click).

Weights come from the config (``loss_focal: 20, loss_dice: 1, loss_iou: 1, loss_bce: 5``, the
guide's defaults; the official config uses 20/1/1/1). One deliberate difference: the official
code all-reduces the object count across ranks before dividing; here each rank divides by its
own count, which keeps ``forward`` free of collectives (same expectation, and identical on a
single process).

Each term is a function registered in :data:`SAM2_LOSS_TERMS`; extra terms registered there
are weighted by ``extra_loss_weights`` in the YAML.

How it is computed (same values and gradients as the plain formulas, which stay here as
:func:`sigmoid_focal_loss`, :func:`dice_loss` and :func:`actual_iou`): the loss takes the
decoder's low-resolution logits and upsamples them to the ground truth's size itself, a few
objects at a time, reducing each chunk to per-mask sums at once (:class:`_BinaryMaskLosses`).
That matters because these full-resolution maps are the largest tensors of a cached SAM2 step
(2 images x 16 objects x 3 masks x 1024^2 floats is 400 MB per intermediate): the plain
autograd formulas keep about ten such intermediates alive for the backward pass and compute
gradients for all three masks although only the best one receives any. The fused backward recomputes
the upsampled logits of just the masks whose loss has a non-zero gradient (the best mask of
each present object) and applies the closed-form derivative of focal and dice loss there.
Binary targets take this path; soft targets fall back to the plain formulas.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from sam_hf.losses.common import dice_loss as _dice
from sam_hf.losses.common import sigmoid_focal
from sam_hf.losses.registry import LossRegistry, weighted_sum

#: Loss terms for SAM2. Built-ins: focal, dice, iou, bce (weights ``loss_<name>``).
SAM2_LOSS_TERMS = LossRegistry("sam2")

IOU_LOSSES = ("l1", "mse")


# --------------------------------------------------------------------------------------------
# Per-mask formulas: (N, M, H, W) logits and (N, M, H, W) {0,1} targets -> (N, M) values.
# --------------------------------------------------------------------------------------------


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """RetinaNet focal loss per mask, averaged over the pixels of each mask.

    ``alpha < 0`` disables the class balancing (as in the official code).
    """
    return sigmoid_focal(logits, targets, alpha, gamma).flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` per mask, on sigmoid probabilities."""
    return _dice(logits, targets, start_dim=2)


def actual_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with ``targets > 0`` per mask; an empty union counts as IoU 0."""
    pred = logits.flatten(2) > 0
    gt = targets.flatten(2) > 0
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return inter / union.clamp(min=1.0)


def iou_head_loss(
    iou_pred: torch.Tensor, target_iou: torch.Tensor, kind: str = "l1"
) -> torch.Tensor:
    """Per-mask L1 or MSE between the IoU head's output and the masks' actual IoUs."""
    if kind == "l1":
        return F.l1_loss(iou_pred, target_iou, reduction="none")
    if kind == "mse":
        return F.mse_loss(iou_pred, target_iou, reduction="none")
    raise ValueError(f"iou_loss must be one of {IOU_LOSSES}, got {kind!r}.")


def iou_prediction_loss(
    logits: torch.Tensor, targets: torch.Tensor, iou_pred: torch.Tensor, kind: str = "l1"
) -> torch.Tensor:
    """Per-mask L1 or MSE between the IoU head's output and the mask's actual IoU."""
    return iou_head_loss(iou_pred, actual_iou(logits, targets), kind)


# --------------------------------------------------------------------------------------------
# The same per-mask values, fused: upsampling, focal, dice and IoU in object chunks.
# --------------------------------------------------------------------------------------------

#: Elements (objects x masks x pixels) the fused mask losses process at once. Large enough that
#: per-operation overhead vanishes, small enough that every temporary (4 MB at the default)
#: stays in the CPU's cache and is reused by the allocator -- full-size temporaries of a
#: 1024 px batch are hundreds of MB, and fresh allocations that large are page-faulted in
#: (and zeroed by the kernel) anew by every operation.
CHUNK_ELEMENTS = 1 << 20
#: Largest pixel count whose {0, 1} sums float32 holds exactly (4096 x 4096).
_EXACT_FLOAT_COUNT = 1 << 24


def _to_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
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
                x = _to_size(logits[s:e].detach(), size).reshape(e - s, m, pixels)
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
                    x = _to_size(low, size)
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


# --------------------------------------------------------------------------------------------
# One prediction step, as seen by every registered term.
# --------------------------------------------------------------------------------------------


class Sam2LossInputs:
    """One prediction step (or one group of objects within it) for the loss terms.

    Attributes are computed lazily and cached, so the per-mask focal and dice values needed to
    choose the best of the multimask outputs are computed once and shared by the terms that
    need them. Binary targets go through the fused :func:`binary_mask_losses` (full-resolution
    logits are then never materialised unless a custom term reads :attr:`mask_logits` or
    :attr:`best_mask_logits`); soft targets through the plain formulas.

    Args:
        mask_logits: (N, M, h, w) mask logits (M = 1 or 3), at the ground-truth resolution or
            lower -- lower-resolution logits (the decoder's) are upsampled bilinearly to it,
            as SAM2 upsamples its masks before the loss.
        iou_pred: (N, M) predicted IoUs.
        object_score_logits: (N, 1) object-score logits.
        targets: (N, H, W) ground-truth masks (bool or {0, 1}; other values take the plain path).
        num_objects: normaliser, the number of objects in the whole batch.
    """

    def __init__(
        self,
        mask_logits: torch.Tensor,
        iou_pred: torch.Tensor,
        object_score_logits: torch.Tensor,
        targets: torch.Tensor,
        num_objects: float,
        *,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        iou_loss: str = "l1",
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
    ) -> None:
        if mask_logits.dim() != 4 or targets.dim() != 3 or mask_logits.shape[0] != targets.shape[0]:
            raise ValueError(
                "mask_logits must be (N, M, h, w) and targets (N, H, W); got "
                f"{tuple(mask_logits.shape)} and {tuple(targets.shape)}."
            )
        self.logits = mask_logits
        self.gt = targets
        self.size = (int(targets.shape[-2]), int(targets.shape[-1]))
        self.iou_pred = iou_pred.float()
        self.object_score_logits = object_score_logits.float().reshape(-1, 1)
        self.num_objects = float(num_objects)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.iou_loss = iou_loss
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight

    @property
    def num_masks(self) -> int:
        return self.logits.shape[1]

    @functools.cached_property
    def mask_logits(self) -> torch.Tensor:
        """(N, M, H, W) float32 logits at the ground-truth resolution (for custom terms)."""
        return _to_size(self.logits, self.size)

    @functools.cached_property
    def targets(self) -> torch.Tensor:
        """(N, M, H, W) float targets, the object's mask repeated for each of its M masks."""
        n, m = self.logits.shape[:2]
        return self.gt.float().unsqueeze(1).expand(n, m, *self.size)

    @functools.cached_property
    def binary_targets(self) -> torch.Tensor | None:
        """(N, H, W) bool targets when every value is 0 or 1, else ``None``."""
        if self.gt.dtype == torch.bool:
            return self.gt
        if bool(((self.gt == 0) | (self.gt == 1)).all()):
            return self.gt != 0
        return None

    @functools.cached_property
    def _per_mask(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(focal, dice, actual IoU), each (N, M)."""
        gt = self.binary_targets
        if gt is not None:
            return binary_mask_losses(self.logits, gt, self.focal_alpha, self.focal_gamma)
        x, t = self.mask_logits, self.targets
        focal = sigmoid_focal_loss(x, t, alpha=self.focal_alpha, gamma=self.focal_gamma)
        return focal, dice_loss(x, t), actual_iou(x, t)

    @functools.cached_property
    def object_present(self) -> torch.Tensor:
        """(N,) float: 1 where the ground truth is non-empty."""
        return self.gt.flatten(1).gt(0).any(-1).float()

    @property
    def focal_per_mask(self) -> torch.Tensor:
        return self._per_mask[0]

    @property
    def dice_per_mask(self) -> torch.Tensor:
        return self._per_mask[1]

    @property
    def actual_iou_per_mask(self) -> torch.Tensor:
        """(N, M) IoU of each thresholded mask with the ground truth (no gradient)."""
        return self._per_mask[2]

    @functools.cached_property
    def iou_loss_per_mask(self) -> torch.Tensor:
        return iou_head_loss(self.iou_pred, self.actual_iou_per_mask, self.iou_loss)

    @functools.cached_property
    def best(self) -> torch.Tensor:
        """(N,) index of the mask that gets the mask losses: lowest weighted focal + dice."""
        if self.num_masks == 1:
            return torch.zeros(self.logits.shape[0], dtype=torch.long, device=self.logits.device)
        combo = self.focal_per_mask * self.focal_weight + self.dice_per_mask * self.dice_weight
        return combo.argmin(dim=-1)

    def pick(self, per_mask: torch.Tensor) -> torch.Tensor:
        """(N, M) -> (N,): the value of the best mask of each object."""
        return per_mask.gather(1, self.best[:, None]).squeeze(1)

    @property
    def best_mask_logits(self) -> torch.Tensor:
        """(N, H, W) float32 logits of the back-propagated mask (for custom terms)."""
        idx = self.best[:, None, None, None].expand(-1, 1, *self.logits.shape[-2:])
        return _to_size(self.logits.gather(1, idx), self.size).squeeze(1)

    def normalise(self, per_object: torch.Tensor) -> torch.Tensor:
        """Sum over objects divided by the batch's object count (the official reduction)."""
        return per_object.sum() / self.num_objects


@SAM2_LOSS_TERMS.register("focal", builtin=True)
def focal_term(x: Sam2LossInputs) -> torch.Tensor:
    """Focal loss of the best mask, only for present objects."""
    return x.normalise(x.pick(x.focal_per_mask) * x.object_present)


@SAM2_LOSS_TERMS.register("dice", builtin=True)
def dice_term(x: Sam2LossInputs) -> torch.Tensor:
    """Dice loss of the best mask, only for present objects."""
    return x.normalise(x.pick(x.dice_per_mask) * x.object_present)


@SAM2_LOSS_TERMS.register("iou", builtin=True)
def iou_term(x: Sam2LossInputs) -> torch.Tensor:
    """IoU-head loss averaged over all output masks (``supervise_all_iou``), present objects."""
    return x.normalise(x.iou_loss_per_mask.mean(-1) * x.object_present)


@SAM2_LOSS_TERMS.register("bce", builtin=True)
def object_score_term(x: Sam2LossInputs) -> torch.Tensor:
    """BCE of the object-score head against "ground truth non-empty", for every object."""
    bce = F.binary_cross_entropy_with_logits(
        x.object_score_logits, x.object_present[:, None], reduction="none"
    )
    return x.normalise(bce.mean(-1))


class Sam2Loss:
    """Weights the registered terms; sums them over objects, groups and prediction steps.

    Usage: ``terms = loss.new_terms()``; for every step (and group of objects with the same
    number of output masks) ``loss.accumulate(terms, ...)``; then ``loss.total(terms)``.
    """

    def __init__(
        self,
        loss_focal: float = 20.0,
        loss_dice: float = 1.0,
        loss_iou: float = 1.0,
        loss_bce: float = 5.0,
        iou_loss: str = "l1",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        extra_loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        if iou_loss not in IOU_LOSSES:
            raise ValueError(f"iou_loss must be one of {IOU_LOSSES}, got {iou_loss!r}.")
        self.weights = SAM2_LOSS_TERMS.resolve_weights(
            {"focal": loss_focal, "dice": loss_dice, "iou": loss_iou, "bce": loss_bce},
            extra_loss_weights,
        )
        self.iou_loss = iou_loss
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    @classmethod
    def from_config(cls, cfg: Any) -> Sam2Loss:
        return cls(
            loss_focal=cfg.loss_focal,
            loss_dice=cfg.loss_dice,
            loss_iou=cfg.loss_iou,
            loss_bce=cfg.loss_bce,
            iou_loss=cfg.iou_loss,
            focal_alpha=cfg.focal_alpha,
            focal_gamma=cfg.focal_gamma,
            extra_loss_weights=dict(cfg.extra_loss_weights or {}),
        )

    @property
    def term_names(self) -> list[str]:
        return list(self.weights)

    def inputs(
        self,
        mask_logits: torch.Tensor,
        iou_pred: torch.Tensor,
        object_score_logits: torch.Tensor,
        targets: torch.Tensor,
        num_objects: float,
    ) -> Sam2LossInputs:
        return Sam2LossInputs(
            mask_logits,
            iou_pred,
            object_score_logits,
            targets,
            num_objects,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            iou_loss=self.iou_loss,
            focal_weight=self.weights["focal"],
            dice_weight=self.weights["dice"],
        )

    def step_terms(
        self,
        mask_logits: torch.Tensor,
        iou_pred: torch.Tensor,
        object_score_logits: torch.Tensor,
        targets: torch.Tensor,
        num_objects: float,
    ) -> dict[str, torch.Tensor]:
        """Every weighted term for one step (zero-weight terms are not computed)."""
        x = self.inputs(mask_logits, iou_pred, object_score_logits, targets, num_objects)
        return {n: SAM2_LOSS_TERMS.get(n)(x) for n, w in self.weights.items() if w != 0.0}

    def new_terms(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Zeroed accumulators, one per term (on ``like``'s device)."""
        return {n: like.new_zeros((), dtype=torch.float32) for n in self.weights}

    def accumulate(self, terms: dict[str, torch.Tensor], *args: Any, **kwargs: Any) -> None:
        """Add one step's terms (arguments as :meth:`step_terms`) into ``terms``."""
        for n, v in self.step_terms(*args, **kwargs).items():
            terms[n] = terms[n] + v

    def total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return weighted_sum(terms, self.weights)
