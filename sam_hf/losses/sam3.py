"""SAM3 concept loss: Hungarian-matched detection + mask terms and the presence term.

One *query* is one (image, noun phrase) pair; SAM3 returns P detections per query
(``pred_logits`` (Q, P), ``pred_boxes`` (Q, P, 4) normalised xyxy, ``pred_masks`` (Q, P, h, w)
logits) and one ``presence_logits`` (Q, 1) saying whether the phrase occurs in the image at
all. Positive queries carry the instances the phrase describes as targets; negative queries
(phrases known to be absent) carry none and only teach "nothing here".

Terms (each unweighted in ``terms``):

- ``loss_class`` -- per detection, sigmoid focal (``class_loss: focal``; alpha 0.25, gamma 2
  as DETR) or plain BCE (``class_loss: bce``) against 1 for matched detections and 0 for all
  others; on a negative query every detection's target is 0. Summed over detections and
  divided by the number of matched targets in the batch (DETR's normalisation).
  SAM3's official loss skips this term on queries without targets and leaves absent phrases
  to the presence head; that is ``negative_class_loss: false`` here. We keep it on by default
  (the issue asks for it on all queries): the final score is ``sigmoid(logit) *
  sigmoid(presence)``, and pushing the detections of an absent phrase down as well gives a
  second, per-detection route to a low score.
- ``loss_presence`` -- BCE on ``presence_logits``: 1 for a positive phrase, 0 for a negative one;
  averaged over queries.
- ``loss_bbox`` / ``loss_giou`` -- on matched pairs only: L1 of normalised (cx, cy, w, h) boxes
  and ``1 - GIoU`` of the xyxy boxes, summed and divided by the number of matched targets (as
  the official SAM3 ``Boxes`` loss).
- ``loss_mask_focal`` / ``loss_mask_dice`` -- on matched pairs only: per-pixel sigmoid focal loss
  (mean over pixels) and dice loss, summed and divided by the number of matched targets.
  Computed at the resolution of ``pred_masks`` (4x the ViT token grid: 288 for 1008 px):
  ground-truth masks (given at the input resolution R) are area-downsampled and thresholded
  at 0.5 coverage, an instance too small to cover half a pixel keeping its best-covered pixel.
  The official code upsamples predictions to R instead; at 1008 px that costs ~12x the memory
  per matched pair for little gain at the 288 px output the model actually produces.

Weights (config names) -> terms:

``total = loss_grounding * (weight_class * loss_class + weight_presence * loss_presence
+ weight_bbox * loss_bbox + weight_giou * loss_giou)
+ loss_segmentation * (weight_mask_focal * loss_mask_focal + weight_mask_dice * loss_mask_dice)``

and ``loss_attribute`` is an *extra* weight on attribute hard-negative queries
("green apple" where every apple is red): every term of such a query counts
``1 + loss_attribute`` times (they have no targets, so this scales their class and presence
terms). Matching costs: ``cost_class``, ``cost_bbox``, ``cost_giou``, ``cost_mask`` (see
:mod:`sam_hf.losses.matcher`).

Not implemented: auxiliary losses on intermediate decoder layers and SAM3's one-to-many
auxiliary matching (transformers' ``Sam3Model`` returns the last decoder layer's outputs only),
and the IoU-aware soft classification targets of the official ``IABCEMdetr``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from sam_hf.losses.common import dice_loss as _dice
from sam_hf.losses.common import sigmoid_focal
from sam_hf.losses.matcher import BinaryHungarianMatcher

TERM_NAMES = (
    "loss_class",
    "loss_presence",
    "loss_bbox",
    "loss_giou",
    "loss_mask_focal",
    "loss_mask_dice",
)


@dataclass
class Sam3LossConfig:
    """Every knob of :class:`Sam3Loss`; names equal the recipe config's keys."""

    loss_segmentation: float = 1.0
    loss_grounding: float = 0.5
    loss_attribute: float = 0.3
    class_loss: str = "focal"
    negative_class_loss: bool = True
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cost_mask: float = 0.0
    weight_class: float = 1.0
    weight_presence: float = 1.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    weight_mask_focal: float = 20.0
    weight_mask_dice: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    @classmethod
    def from_args(cls, args: Any) -> Sam3LossConfig:
        """Read the fields present on a config object (dataclass or SimpleNamespace)."""
        kw = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**kw)

    def __post_init__(self) -> None:
        if self.class_loss not in ("focal", "bce"):
            raise ValueError(f"class_loss must be 'focal' or 'bce', got {self.class_loss!r}.")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float | int) and not isinstance(v, bool) and v < 0:
                raise ValueError(f"{f.name} must be >= 0, got {v}.")


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask dice loss (N,) of logits (N, ...) vs targets (N, ...), +1 smoothed."""
    return _dice(logits, targets, start_dim=1)


def resize_target_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bool masks (T, R, R) -> float {0, 1} masks (T, h, w) at the prediction resolution.

    Area-average then keep pixels at least half covered; an instance that would vanish keeps
    its best-covered pixel, so every matched target still has a non-empty mask.
    """
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    m = masks.float()
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    cover = F.interpolate(m[:, None], size=size, mode="area")[:, 0]
    out = (cover >= 0.5).float()
    vanished = (out.flatten(1).sum(1) == 0) & (m.flatten(1).sum(1) > 0)
    if vanished.any():
        idx = vanished.nonzero().flatten()
        best = cover[idx].flatten(1).argmax(1)
        flat = out.view(out.shape[0], -1)
        flat[idx, best] = 1.0
    return out


class Sam3Loss(nn.Module):
    """Matcher + weighted terms; call with the model's per-query outputs and the batch targets."""

    def __init__(self, config: Sam3LossConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or Sam3LossConfig()
        if overrides:
            cfg = Sam3LossConfig(
                **{**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **overrides}
            )
        self.cfg = cfg
        self.matcher = BinaryHungarianMatcher(
            cost_class=cfg.cost_class,
            cost_bbox=cfg.cost_bbox,
            cost_giou=cfg.cost_giou,
            cost_mask=cfg.cost_mask,
            focal_alpha=cfg.focal_alpha,
            focal_gamma=cfg.focal_gamma,
        )

    @classmethod
    def from_args(cls, args: Any) -> Sam3Loss:
        return cls(Sam3LossConfig.from_args(args))

    def forward(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        pred_masks: torch.Tensor,
        presence_logits: torch.Tensor,
        target_boxes: torch.Tensor,
        target_masks: torch.Tensor,
        num_targets: torch.Tensor,
        is_attribute: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss (with grad) and the unweighted terms (detached).

        Predictions: ``pred_logits`` (Q, P), ``pred_boxes`` (Q, P, 4) normalised xyxy,
        ``pred_masks`` (Q, P, h, w) logits, ``presence_logits`` (Q, 1) or (Q,).
        Targets of all queries concatenated in query order: ``target_boxes`` (T, 4) normalised
        xyxy, ``target_masks`` (T, R, R) bool at any resolution R, ``num_targets`` (Q,).
        ``is_attribute`` (Q,) marks attribute hard-negative queries.
        """
        cfg = self.cfg
        pred_logits = pred_logits.float()
        pred_boxes = pred_boxes.float()
        pred_masks = pred_masks.float()
        presence = presence_logits.float().reshape(-1)
        q = pred_logits.shape[0]
        device = pred_logits.device
        num_targets = num_targets.to(device=device, dtype=torch.long)
        target_boxes = target_boxes.to(device=device, dtype=torch.float32)

        weight_q = torch.ones(q, device=device)
        if is_attribute is not None:
            weight_q = weight_q + cfg.loss_attribute * is_attribute.to(device).float()
        has_target = num_targets > 0
        n_norm = num_targets.sum().clamp(min=1).float()

        tgt_masks = resize_target_masks(target_masks.to(device), tuple(pred_masks.shape[-2:]))
        indices = self.matcher(
            pred_logits, pred_boxes, target_boxes, num_targets, pred_masks, tgt_masks
        )
        q_idx, src_idx, tgt_idx = matched_pairs(indices, num_targets)

        # Every detection's class, the phrase's presence; then the matched pairs' boxes and masks.
        cls = self.classification_loss(pred_logits, q_idx, src_idx, weight_q, has_target)
        pres = F.binary_cross_entropy_with_logits(presence, has_target.float(), reduction="none")
        pair_w = weight_q[q_idx]
        terms = {
            "loss_class": cls / n_norm,
            "loss_presence": (pres * weight_q).sum() / max(q, 1),
            **box_losses(pred_boxes[q_idx, src_idx], target_boxes[tgt_idx], pair_w, n_norm),
            **self.mask_losses(pred_masks[q_idx, src_idx], tgt_masks[tgt_idx], pair_w, n_norm),
        }
        return self.total(terms), {k: v.detach() for k, v in terms.items()}

    def classification_loss(
        self,
        pred_logits: torch.Tensor,
        q_idx: torch.Tensor,
        src_idx: torch.Tensor,
        weight_q: torch.Tensor,
        has_target: torch.Tensor,
    ) -> torch.Tensor:
        """Classification over every detection of every (kept) query: 1 for matched detections,
        0 for the rest; summed (not yet normalised)."""
        cfg = self.cfg
        cls_target = torch.zeros_like(pred_logits)
        cls_target[q_idx, src_idx] = 1.0
        if cfg.class_loss == "focal":
            cls = sigmoid_focal(pred_logits, cls_target, cfg.focal_alpha, cfg.focal_gamma)
        else:
            cls = F.binary_cross_entropy_with_logits(pred_logits, cls_target, reduction="none")
        cls_w = weight_q if cfg.negative_class_loss else weight_q * has_target.float()
        return (cls.sum(1) * cls_w).sum()

    def mask_losses(
        self,
        src_m: torch.Tensor,
        tgt_m: torch.Tensor,
        pair_w: torch.Tensor,
        n_norm: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Focal (mean over pixels) and dice of the matched pairs' masks."""
        cfg = self.cfg
        focal = sigmoid_focal(src_m, tgt_m, cfg.focal_alpha, cfg.focal_gamma).flatten(1).mean(1)
        return {
            "loss_mask_focal": (focal * pair_w).sum() / n_norm,
            "loss_mask_dice": (dice_loss(src_m, tgt_m) * pair_w).sum() / n_norm,
        }

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The grouped weighted sum of the terms (see the module docstring)."""
        cfg = self.cfg
        return cfg.loss_grounding * (
            cfg.weight_class * terms["loss_class"]
            + cfg.weight_presence * terms["loss_presence"]
            + cfg.weight_bbox * terms["loss_bbox"]
            + cfg.weight_giou * terms["loss_giou"]
        ) + cfg.loss_segmentation * (
            cfg.weight_mask_focal * terms["loss_mask_focal"]
            + cfg.weight_mask_dice * terms["loss_mask_dice"]
        )


def matched_pairs(
    indices: list[tuple[torch.Tensor, torch.Tensor]], num_targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The matched pairs of all queries flattened: (query, prediction, global target index)."""
    device = num_targets.device
    offsets = torch.cumsum(num_targets, 0) - num_targets
    q_idx = src_idx = tgt_idx = torch.zeros(0, dtype=torch.long, device=device)
    if len(indices):
        q_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        tgt_idx = torch.cat([offsets[i] + tgt for i, (_, tgt) in enumerate(indices)])
    return q_idx, src_idx, tgt_idx


def box_losses(
    src_b: torch.Tensor, tgt_b: torch.Tensor, pair_w: torch.Tensor, n_norm: torch.Tensor
) -> dict[str, torch.Tensor]:
    """L1 of (cx, cy, w, h) and ``1 - GIoU`` of the matched pairs' xyxy boxes."""
    l1 = (box_convert(src_b, "xyxy", "cxcywh") - box_convert(tgt_b, "xyxy", "cxcywh")).abs().sum(1)
    if src_b.shape[0]:
        giou = torch.diagonal(generalized_box_iou(src_b, tgt_b))
    else:
        giou = src_b.new_zeros(0)
    return {
        "loss_bbox": (l1 * pair_w).sum() / n_norm,
        "loss_giou": ((1 - giou) * pair_w).sum() / n_norm,
    }
