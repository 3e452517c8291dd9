"""SAM3 concept loss: Hungarian-matched detection + mask terms and the presence term.

One *query* is one (image, noun phrase) pair; SAM3 returns P detections per query
(``pred_logits`` (Q, P), ``pred_boxes`` (Q, P, 4) normalised xyxy, ``pred_masks`` (Q, P, h, w)
logits) and one ``presence_logits`` (Q, 1) saying whether the phrase occurs in the image at
all. Positive queries carry the instances the phrase describes as targets; negative queries
(phrases known to be absent) carry none and only teach "nothing here".

Two presets fill every setting a user leaves unset (:data:`sam_hf.config.presets.PRESETS`,
which names the official file and key of each value): ``official`` trains as Meta's SAM3
fine-tuning configs do (``sam3/train/configs/roboflow_v100/roboflow_v100_full_ft_100_images.yaml``
with the code of ``sam3/train/loss/``), ``guide`` keeps the fine-tuning guide's grouped weights
and sam_hf's earlier behaviour. Terms (each unweighted in ``terms``), with N the number of
matched targets (``normalization: global``: its mean over processes, as the official
``Sam3LossWrapper``; ``local``: this process's), at least 1:

- ``loss_class`` -- per detection. ``class_loss: iabce`` (official ``IABCEMdetr``): matched
  detections get the IoU-aware soft target ``t = max(0.01, prob^a IoU^(1-a))`` (detached;
  ``a = iabce_alpha``, IoU of the matched boxes) and ``iabce_pos_weight * BCE(logit, t)``; the
  others ``prob^iabce_gamma * BCE(logit, 0)``; averaged over Q x max(P, ``class_pad_queries``)
  entries. ``focal`` (alpha ``focal_alpha``, gamma ``focal_gamma``) or ``bce``: hard targets (1
  for matched, 0 for the rest), summed and divided by N (DETR). With ``negative_class_loss:
  false`` (official) queries without targets get no class loss and are left to presence.
- ``loss_presence`` -- BCE on ``presence_logits`` (1 for a positive phrase, 0 for a negative
  one), weighted ``presence_alpha`` / ``1 - presence_alpha`` for present / absent as the
  official focal with gamma 0 (plain BCE when ``presence_alpha < 0``); averaged over queries.
- ``loss_bbox`` / ``loss_giou`` -- on matched pairs only: L1 of normalised (cx, cy, w, h) boxes
  and ``1 - GIoU`` of the xyxy boxes, summed and divided by N (official ``Boxes``).
- ``loss_mask_focal`` / ``loss_mask_dice`` -- on matched pairs only: per-pixel sigmoid focal loss
  (mean over pixels) and dice loss, summed and divided by N (official ``Masks``).
  ``mask_resolution: target`` (official) upsamples the predicted logits bilinearly to the
  ground truth's resolution, through the memory-bounded fused kernel of
  :mod:`sam_hf.losses.fused` (chunks, upsampled logits recomputed in backward, never stored);
  ``prediction`` area-downsamples the targets to ``pred_masks``' size instead
  (:func:`resize_target_masks`).

``total = s * (loss_grounding * sum over layers (weight_class * loss_class + weight_presence *
loss_presence + weight_bbox * loss_bbox + weight_giou * loss_giou)
+ loss_segmentation * (weight_mask_focal * loss_mask_focal + weight_mask_dice * loss_mask_dice))``

where the layers are the last decoder layer and, with ``aux_loss: true`` (official), every
intermediate one (``aux_outputs``: each matched on its own, masks on the last layer only, as the
official ``compute_aux`` flags); their weighted sum is reported as ``loss_aux``. ``s`` is
``sqrt(Q)`` with ``scale_by_batch_size: true`` (official ``scale_by_find_batch_size``), else 1.
``loss_attribute`` is an *extra* weight on attribute hard-negative queries ("green apple" where
every apple is red): every term of such a query counts ``1 + loss_attribute`` times. Matching
costs: ``cost_class``, ``cost_bbox``, ``cost_giou``, ``cost_mask`` (:mod:`sam_hf.losses.matcher`).

Not implemented: SAM3's one-to-many term. The official decoder trains a second copy of the
queries ("DAC", ``sam3/model/decoder.py`` ``dac=True``) that skips self-attention and is matched
one-to-many; transformers' ``Sam3DetrDecoder`` has no such queries (every query self-attends, and
there is no ``pred_logits_o2m``), so there is nothing for that term to supervise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert

from sam_hf.config.presets import PRESETS
from sam_hf.losses.common import dice_loss as _dice
from sam_hf.losses.common import sigmoid_focal
from sam_hf.losses.fused import binary_mask_losses
from sam_hf.losses.matcher import BinaryHungarianMatcher

TERM_NAMES = (
    "loss_class",
    "loss_presence",
    "loss_bbox",
    "loss_giou",
    "loss_mask_focal",
    "loss_mask_dice",
)
#: The terms computed on every decoder layer (masks only on the last, as officially).
DETECTION_TERMS = TERM_NAMES[:4]
_CHOICES = {
    "class_loss": ("iabce", "focal", "bce"),
    "mask_resolution": ("target", "prediction"),
    "normalization": ("global", "local"),
}


@dataclass
class Sam3LossConfig:
    """Every knob of :class:`Sam3Loss`; names equal the recipe config's keys. Settings left
    ``None`` come from ``preset`` (:data:`sam_hf.config.presets.PRESETS` ``["sam3"]``)."""

    preset: str = "official"
    loss_segmentation: float | None = None
    loss_grounding: float | None = None
    loss_attribute: float | None = None
    class_loss: str | None = None
    negative_class_loss: bool | None = None
    cost_class: float | None = None
    cost_bbox: float | None = None
    cost_giou: float | None = None
    cost_mask: float | None = None
    weight_class: float | None = None
    weight_presence: float | None = None
    weight_bbox: float | None = None
    weight_giou: float | None = None
    weight_mask_focal: float | None = None
    weight_mask_dice: float | None = None
    focal_alpha: float | None = None
    focal_gamma: float | None = None
    iabce_alpha: float | None = None
    iabce_gamma: float | None = None
    iabce_pos_weight: float | None = None
    class_pad_queries: int | None = None
    presence_alpha: float | None = None
    mask_resolution: str | None = None
    aux_loss: bool | None = None
    scale_by_batch_size: bool | None = None
    normalization: str | None = None

    @classmethod
    def from_args(cls, args: Any) -> Sam3LossConfig:
        """Read the fields present on a config object (dataclass or SimpleNamespace)."""
        kw = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**kw)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS["sam3"]:
            raise ValueError(f"preset must be one of {', '.join(PRESETS['sam3'])}.")
        for key, (value, _source) in PRESETS["sam3"][self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}.")
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                raise ValueError(f"{f.name} is unset and preset {self.preset!r} has no value.")
            signed = f.name in ("presence_alpha", "focal_alpha")  # < 0: no class weighting
            if isinstance(v, float | int) and not isinstance(v, bool) and v < 0 and not signed:
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


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of the xyxy box pairs ``a[i]``, ``b[i]`` ((N,) each)."""
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union
    return iou, iou - (hull - union) / hull


def global_count(n: torch.Tensor) -> torch.Tensor:
    """``n`` averaged over the processes of the default process group (itself without one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        n = n.clone()
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n


class Sam3Loss(nn.Module):
    """Matcher + weighted terms; call with the model's per-query outputs and the batch targets."""

    def __init__(self, config: Sam3LossConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or Sam3LossConfig(**overrides)
        if config is not None and overrides:
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

    def num_boxes(self, num_targets: torch.Tensor) -> torch.Tensor:
        """The box/mask normaliser N: matched targets (mean over processes when global), >= 1."""
        n = num_targets.sum().float()
        if self.cfg.normalization == "global":
            n = global_count(n)
        return n.clamp(min=1)

    def skip_step(self, device: torch.device) -> None:
        """Join the collective of :meth:`num_boxes` on a step whose batch holds no query, so
        that processes with queries do not wait for this one."""
        if self.cfg.normalization == "global":
            global_count(torch.zeros((), device=device))

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
        aux_outputs: Sequence[Mapping[str, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss (with grad) and the unweighted terms (detached).

        Predictions: ``pred_logits`` (Q, P), ``pred_boxes`` (Q, P, 4) normalised xyxy,
        ``pred_masks`` (Q, P, h, w) logits, ``presence_logits`` (Q, 1) or (Q,).
        Targets of all queries concatenated in query order: ``target_boxes`` (T, 4) normalised
        xyxy, ``target_masks`` (T, R, R) bool at any resolution R, ``num_targets`` (Q,).
        ``is_attribute`` (Q,) marks attribute hard-negative queries. ``aux_outputs``: per
        intermediate decoder layer, ``{"pred_logits", "pred_boxes", "presence_logits"}`` shaped
        as the final ones (used when ``aux_loss`` is on).
        """
        cfg = self.cfg
        pred_masks = pred_masks.float()
        q = pred_logits.shape[0]
        device = pred_logits.device
        num_targets = num_targets.to(device=device, dtype=torch.long)
        target_boxes = target_boxes.to(device=device, dtype=torch.float32)
        target_masks = target_masks.to(device)
        weight_q = torch.ones(q, device=device)
        if is_attribute is not None:
            weight_q = weight_q + cfg.loss_attribute * is_attribute.to(device).float()
        n_norm = self.num_boxes(num_targets)
        low = None
        if cfg.cost_mask > 0 or cfg.mask_resolution == "prediction":
            low = resize_target_masks(target_masks, tuple(pred_masks.shape[-2:]))
        ctx = (target_boxes, num_targets, weight_q, n_norm)
        final = {"pred_logits": pred_logits, "pred_boxes": pred_boxes}
        final["presence_logits"] = presence_logits
        terms, (q_idx, src_idx, tgt_idx) = self.detection_terms(final, ctx, pred_masks, low)
        src_m = pred_masks[q_idx, src_idx]
        tgt_m = low[tgt_idx] if cfg.mask_resolution == "prediction" else target_masks[tgt_idx]
        terms.update(self.mask_losses(src_m, tgt_m, weight_q[q_idx], n_norm))
        total = self.total(terms)
        if cfg.aux_loss and aux_outputs:
            aux = sum(self.grounding(self.detection_terms(out, ctx)[0]) for out in aux_outputs)
            terms["loss_aux"] = aux
            total = total + aux
        if cfg.scale_by_batch_size:
            total = total * math.sqrt(q)
        return total, {k: v.detach() for k, v in terms.items()}

    def detection_terms(
        self,
        out: Mapping[str, torch.Tensor],
        ctx: tuple[torch.Tensor, ...],
        pred_masks: torch.Tensor | None = None,
        low_targets: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Class, presence, box L1 and GIoU of one decoder layer's outputs, matched on their
        own; also the matched (query, prediction, target) indices."""
        target_boxes, num_targets, weight_q, n_norm = ctx
        logits = out["pred_logits"].float()
        boxes = out["pred_boxes"].float()
        presence = out["presence_logits"].float().reshape(-1)
        indices = self.matcher(logits, boxes, target_boxes, num_targets, pred_masks, low_targets)
        q_idx, src_idx, tgt_idx = matched_pairs(indices, num_targets)
        src_b, tgt_b = boxes[q_idx, src_idx], target_boxes[tgt_idx]
        has_target = num_targets > 0
        cls = self.classification_loss(logits, q_idx, src_idx, src_b, tgt_b, weight_q, has_target)
        terms = {
            "loss_class": cls if self.cfg.class_loss == "iabce" else cls / n_norm,
            "loss_presence": self.presence_loss(presence, has_target, weight_q),
            **box_losses(src_b, tgt_b, weight_q[q_idx], n_norm),
        }
        return terms, (q_idx, src_idx, tgt_idx)

    def classification_loss(
        self,
        logits: torch.Tensor,
        q_idx: torch.Tensor,
        src_idx: torch.Tensor,
        src_b: torch.Tensor,
        tgt_b: torch.Tensor,
        weight_q: torch.Tensor,
        has_target: torch.Tensor,
    ) -> torch.Tensor:
        """Every detection of every kept query: IABCE (averaged, see the module docstring), or
        focal / BCE with hard targets (summed, not yet divided by N)."""
        cfg = self.cfg
        matched = torch.zeros_like(logits)
        matched[q_idx, src_idx] = 1.0
        cls_w = weight_q if cfg.negative_class_loss else weight_q * has_target.float()
        if cfg.class_loss == "focal":
            cls = sigmoid_focal(logits, matched, cfg.focal_alpha, cfg.focal_gamma)
        elif cfg.class_loss == "bce":
            cls = F.binary_cross_entropy_with_logits(logits, matched, reduction="none")
        else:
            prob = logits.sigmoid()
            with torch.no_grad():
                iou, _ = paired_iou(src_b, tgt_b)
                soft = torch.zeros_like(logits)
                a = cfg.iabce_alpha
                soft[q_idx, src_idx] = (prob[q_idx, src_idx] ** a * iou ** (1 - a)).clamp(0.01)
            pos = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
            neg = F.binary_cross_entropy_with_logits(logits, matched, reduction="none")
            cls = pos * matched * cfg.iabce_pos_weight
            cls = cls + neg * (1 - matched) * prob**cfg.iabce_gamma
            entries = logits.shape[0] * max(logits.shape[1], cfg.class_pad_queries)
            return (cls * cls_w[:, None]).sum() / max(entries, 1)
        return (cls.sum(1) * cls_w).sum()

    def presence_loss(
        self, presence: torch.Tensor, has_target: torch.Tensor, weight_q: torch.Tensor
    ) -> torch.Tensor:
        """BCE of the presence logits against "the phrase has targets", alpha-weighted as the
        official focal loss with gamma 0 (``presence_alpha < 0``: plain BCE); mean over queries."""
        y = has_target.float()
        bce = F.binary_cross_entropy_with_logits(presence, y, reduction="none")
        alpha = self.cfg.presence_alpha
        if alpha >= 0:
            bce = bce * (alpha * y + (1 - alpha) * (1 - y))
        return (bce * weight_q).sum() / max(presence.shape[0], 1)

    def mask_losses(
        self,
        src_m: torch.Tensor,
        tgt_m: torch.Tensor,
        pair_w: torch.Tensor,
        n_norm: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Focal (mean over pixels) and dice of the matched pairs' masks (N, h, w) logits vs
        targets at their own resolution (upsampled to it, chunked, when larger)."""
        cfg = self.cfg
        if src_m.shape[0] == 0:
            zero = src_m.sum() * 0.0
            return {"loss_mask_focal": zero, "loss_mask_dice": zero}
        if tuple(src_m.shape[-2:]) == tuple(tgt_m.shape[-2:]) and tgt_m.dtype != torch.bool:
            focal = sigmoid_focal(src_m, tgt_m, cfg.focal_alpha, cfg.focal_gamma).flatten(1)
            focal, dice = focal.mean(1), dice_loss(src_m, tgt_m)
        else:
            focal, dice, _ = binary_mask_losses(
                src_m[:, None], tgt_m, cfg.focal_alpha, cfg.focal_gamma
            )
            focal, dice = focal[:, 0], dice[:, 0]
        return {
            "loss_mask_focal": (focal * pair_w).sum() / n_norm,
            "loss_mask_dice": (dice * pair_w).sum() / n_norm,
        }

    def grounding(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The weighted detection terms of one decoder layer (class, presence, boxes)."""
        cfg = self.cfg
        return cfg.loss_grounding * (
            cfg.weight_class * terms["loss_class"]
            + cfg.weight_presence * terms["loss_presence"]
            + cfg.weight_bbox * terms["loss_bbox"]
            + cfg.weight_giou * terms["loss_giou"]
        )

    def total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The grouped weighted sum of the last layer's terms (see the module docstring)."""
        cfg = self.cfg
        return self.grounding(terms) + cfg.loss_segmentation * (
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
    _, giou = paired_iou(src_b, tgt_b)
    return {
        "loss_bbox": (l1 * pair_w).sum() / n_norm,
        "loss_giou": ((1 - giou) * pair_w).sum() / n_norm,
    }
