"""Binary Hungarian matching of SAM3's detection queries to the instances of one text query.

SAM3 (like DETR) predicts a fixed set of P detections per (image, phrase) query and is trained
set-wise: each ground-truth instance of the phrase is assigned to exactly one detection by a
minimum-cost bipartite matching, the matched detections learn that instance, and every other
detection learns "no object". The task is binary (the phrase either describes the object or
not), so the class cost depends on the prediction only.

Cost of assigning prediction p to target g (lower is better), as in the official SAM3
``BinaryFocalHungarianMatcher`` / Deformable DETR:

- class (weight ``cost_class``, default 2): focal-style
  ``alpha (1-s)^gamma (-log s) - (1-alpha) s^gamma (-log(1-s))`` with ``s = sigmoid(logit)``,
  i.e. the focal loss of calling p an object minus that of calling it background;
- box L1 (``cost_bbox``, default 5): L1 distance of the normalised (cx, cy, w, h) boxes (SAM3
  regresses cxcywh internally and its official box loss/cost use that form);
- GIoU (``cost_giou``, default 2): ``-GIoU`` of the normalised xyxy boxes;
- mask (``cost_mask``, default 0 = off, as the official matcher, which has no mask cost): mean
  per-pixel BCE + dice loss between the predicted mask logits and the target mask at the
  prediction's resolution (Mask2Former's mask costs, summed under one weight).

The official SAM3 fine-tuning configs use ``BinaryHungarianMatcherV2`` with ``focal: true``,
class 2 / L1 5 / GIoU 2 and alpha 0.25 / gamma 2: this cost, the same assignment
(``tests/test_official_sam3_loss.py`` compares them).

The assignment uses ``scipy.optimize.linear_sum_assignment``. With more targets than
predictions only P targets get matched (the rest stay unmatched, as in the official code).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou


def focal_class_cost(logits: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-prediction class cost (P,): focal loss as positive minus focal loss as negative."""
    prob = logits.sigmoid()
    pos = alpha * (1 - prob) ** gamma * (-F.logsigmoid(logits))
    neg = (1 - alpha) * prob**gamma * (-F.logsigmoid(-logits))
    return pos - neg


def mask_cost_matrix(pred_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(P, G) mean pixel BCE + dice loss between mask logits (P, h, w) and targets (G, h, w)."""
    p = pred_logits.flatten(1).float()
    t = target.flatten(1).float()
    hw = p.shape[1]
    # BCE(x, y) = softplus(x) - x*y, summed over pixels for every (p, g) pair by one matmul.
    bce = (F.softplus(p).sum(1, keepdim=True) - p @ t.T) / hw
    prob = p.sigmoid()
    dice = 1 - (2 * prob @ t.T + 1) / (prob.sum(1, keepdim=True) + t.sum(1)[None] + 1)
    return bce + dice


def cost_matrix(
    pred_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    tgt_boxes: torch.Tensor,
    cost_class: float = 2.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    cost_mask: float = 0.0,
    pred_masks: torch.Tensor | None = None,
    tgt_masks: torch.Tensor | None = None,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> torch.Tensor:
    """Matching cost (P, G) of one query: predictions (P,), (P, 4) vs targets (G, 4).

    Boxes are normalised xyxy (SAM3's ``pred_boxes`` convention). Masks, needed only when
    ``cost_mask > 0``, are (P, h, w) logits and (G, h, w) targets at the same resolution.
    """
    pred_boxes = pred_boxes.float()
    tgt_boxes = tgt_boxes.float()
    l1 = torch.cdist(
        box_convert(pred_boxes, "xyxy", "cxcywh"), box_convert(tgt_boxes, "xyxy", "cxcywh"), p=1
    )
    cost = cost_bbox * l1 - cost_giou * generalized_box_iou(pred_boxes, tgt_boxes)
    cost = (
        cost + cost_class * focal_class_cost(pred_logits.float(), focal_alpha, focal_gamma)[:, None]
    )
    if cost_mask > 0:
        if pred_masks is None or tgt_masks is None:
            raise ValueError("cost_mask > 0 needs pred_masks and tgt_masks.")
        cost = cost + cost_mask * mask_cost_matrix(pred_masks, tgt_masks)
    return cost


def hungarian(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost assignment of a (P, G) matrix: (pred indices, target indices), sorted by target.

    Non-finite entries (a NaN from a diverged step) are replaced by a large finite cost so the
    solver never fails; the loss itself then reports the non-finite value.
    """
    c = torch.nan_to_num(cost.detach().float(), nan=1e8, posinf=1e8, neginf=-1e8).cpu().numpy()
    rows, cols = linear_sum_assignment(c)
    order = np.argsort(cols)
    return (
        torch.as_tensor(rows[order], dtype=torch.long),
        torch.as_tensor(cols[order], dtype=torch.long),
    )


class BinaryHungarianMatcher:
    """Match every text query's predictions to its own targets (negative queries get none).

    Weights come from the config (``cost_class``, ``cost_bbox``, ``cost_giou``, ``cost_mask``).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        cost_mask: float = 0.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        if min(cost_class, cost_bbox, cost_giou, cost_mask) < 0:
            raise ValueError("Matching cost weights must be >= 0.")
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0 and cost_mask == 0:
            raise ValueError(
                "At least one of cost_class/cost_bbox/cost_giou/cost_mask must be > 0."
            )
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.cost_mask = float(cost_mask)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    @torch.no_grad()
    def __call__(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        tgt_boxes: torch.Tensor,
        num_targets: torch.Tensor,
        pred_masks: torch.Tensor | None = None,
        tgt_masks: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per query q: (prediction indices, target indices local to q), on the inputs' device.

        ``pred_logits`` (Q, P), ``pred_boxes`` (Q, P, 4); targets of all queries concatenated:
        ``tgt_boxes`` (T, 4), ``num_targets`` (Q,) with sum T; optional ``pred_masks``
        (Q, P, h, w) and ``tgt_masks`` (T, h, w) for the mask cost (without them -- SAM3's
        intermediate decoder layers predict no masks -- the mask cost is left out).
        """
        device = pred_logits.device
        counts = [int(n) for n in num_targets.tolist()]
        if sum(counts) != tgt_boxes.shape[0]:
            raise ValueError(
                f"num_targets sums to {sum(counts)} but there are {tgt_boxes.shape[0]} target boxes."
            )
        out = []
        start = 0
        for q, n in enumerate(counts):
            if n == 0:
                empty = torch.zeros(0, dtype=torch.long, device=device)
                out.append((empty, empty.clone()))
                continue
            sl = slice(start, start + n)
            start += n
            use_masks = self.cost_mask > 0 and pred_masks is not None and tgt_masks is not None
            cost = cost_matrix(
                pred_logits[q],
                pred_boxes[q],
                tgt_boxes[sl],
                self.cost_class,
                self.cost_bbox,
                self.cost_giou,
                self.cost_mask if use_masks else 0.0,
                pred_masks[q] if use_masks else None,
                tgt_masks[sl] if use_masks else None,
                self.focal_alpha,
                self.focal_gamma,
            )
            rows, cols = hungarian(cost)
            out.append((rows.to(device), cols.to(device)))
        return out
