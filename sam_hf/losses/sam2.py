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

Weights come from the config (``preset: official`` 20/1/1/1 as
``sam2.1_hiera_b+_MOSE_finetune.yaml``; ``preset: guide`` 20/1/1/5). The ``num_objects`` each
step is divided by is the caller's: :class:`~sam_hf.models.sam2_training.Sam2ForTraining`
passes the official one (the object count all-reduced over ranks and divided by the world
size, at least 1). tests/test_official_sam2_loss.py checks terms, total and gradients
against the official ``training/loss_fns.py``.

Each term is a function registered in :data:`SAM2_LOSS_TERMS`; extra terms registered there
are weighted by ``extra_loss_weights`` in the YAML.

How it is computed: binary targets go through the fused, chunked
:func:`~sam_hf.losses.fused.binary_mask_losses` (same values and gradients as the plain formulas
below, a fraction of the memory: the full-resolution logits are never all alive); soft targets
through the plain formulas.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from sam_hf.losses.common import dice_loss as _dice
from sam_hf.losses.common import sigmoid_focal
from sam_hf.losses.fused import binary_mask_losses, to_size
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
        return to_size(self.logits, self.size)

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
        return to_size(self.logits.gather(1, idx), self.size).squeeze(1)

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
