"""Which prediction answers which ground-truth instance: pycocotools IoU and the matchings.

The SAM3 side of the metrics compares a set of scored predictions with a set of instances,
in three steps written once here: keep the predictions scoring >= a threshold
(:func:`kept_pair`, :data:`SCORE_THRESHOLD` = 0.5 as in SA-Co), measure every pair's IoU
with the pycocotools convention (:func:`pairwise_mask_iou`: an empty mask overlaps nothing,
IoU 0 even with another empty mask) and assign them one to one:

* :func:`hungarian`: the assignment maximising the total IoU (SA-Co's ``CGF1Eval``). Its
  per-instance IoUs (:func:`matched_ious`, :func:`matched_instance_ious`, averaged over every
  instance by :func:`mean_matched_iou`) are SAM3's "matched instance IoU", the analogue of
  SAM2's per-object IoU; :func:`sam_hf.metrics.concepts.saco_metrics` thresholds them.
* :func:`max_matching`: the largest matching among pairs with IoU >= :data:`MATCH_IOU`
  (concept recall and attribute accuracy, which count instances found).

:func:`remap_scores` moves any other score threshold onto 0.5 without changing a ranking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from sam_hf.metrics.arrays import (
    FLOAT32_EXACT,
    as_masks,
    as_vector,
    count_true,
    same_place,
    select,
    to_tensor,
)

__all__ = [
    "MATCH_IOU",
    "SCORE_THRESHOLD",
    "hungarian",
    "kept_pair",
    "matched_instance_ious",
    "matched_ious",
    "max_matching",
    "mean_matched_iou",
    "pairwise_mask_iou",
    "remap_scores",
]

#: Predictions with a score at or above this count as "kept" (SA-Co's ``threshold=0.5``).
SCORE_THRESHOLD = 0.5
#: IoU a prediction needs to count as finding an instance (concept recall, attributes).
MATCH_IOU = 0.5


def _intersections_numpy(pf: np.ndarray, gf: np.ndarray) -> np.ndarray:
    """|p_i & g_j| for bool (P, L) and (G, L) rows, int64 (P, G).

    Bit-packed AND + popcount (numpy >= 2): 8 pixels a byte, measured ~4x faster here
    than a float32 matmul, whose cast alone writes 4 bytes per pixel. Exact either way.
    """
    if not hasattr(np, "bitwise_count"):  # numpy < 2: exact float matmul instead
        ftype = np.float32 if pf.shape[1] < FLOAT32_EXACT else np.float64
        return np.rint(pf.astype(ftype) @ gf.astype(ftype).T).astype(np.int64)
    pad = (-pf.shape[1]) % 64
    pk = [np.packbits(np.pad(m, ((0, 0), (0, pad))), axis=1).view(np.uint64) for m in (pf, gf)]
    small, large = (pk[0], pk[1]) if len(pk[0]) <= len(pk[1]) else (pk[1], pk[0])
    out = np.stack([np.bitwise_count(large & row).sum(1, dtype=np.int64) for row in small])
    return out if len(pk[0]) <= len(pk[1]) else out.T


def pairwise_mask_iou(pred: Any, gt: Any) -> np.ndarray:
    """IoU of every prediction with every ground truth, float64 numpy (P, G).

    pycocotools convention: an empty mask overlaps nothing, so its IoU is 0 even against
    another empty mask. Only the pixels some mask covers are read when that is under half
    the image; intersections are exact integer counts (bit-packed popcounts on the CPU,
    an exact 0/1 matmul on accelerators) and the division is done in float64 like
    pycocotools' ``(double)i/u``, so the values are identical to ``maskUtils.iou``.
    """
    p, g = as_masks(pred, "pred", empty_ok=True), as_masks(gt, "gt", empty_ok=True)
    if p.shape[0] == 0 or g.shape[0] == 0:
        return np.zeros((p.shape[0], g.shape[0]), dtype=np.float64)
    if p.shape[1:] != g.shape[1:]:
        raise ValueError(
            f"predicted and ground-truth masks differ in size: {tuple(p.shape[1:])} vs "
            f"{tuple(g.shape[1:])}"
        )
    p, g = same_place(p, g)
    pf, gf = p.reshape(p.shape[0], -1), g.reshape(g.shape[0], -1)
    covered = pf.any(0) | gf.any(0)
    if isinstance(pf, np.ndarray):
        cols = np.flatnonzero(covered)
        if 2 * cols.size < covered.size:  # small objects: only the pixels that matter
            pf, gf = np.take(pf, cols, axis=1), np.take(gf, cols, axis=1)
        inter = _intersections_numpy(pf, gf)
    else:
        cols = torch.nonzero(covered).reshape(-1)
        if 2 * cols.numel() < covered.numel():
            pf, gf = pf.index_select(1, cols), gf.index_select(1, cols)
        ftype = torch.float32 if pf.shape[1] < FLOAT32_EXACT else torch.float64
        with torch.autocast(device_type=pf.device.type, enabled=False):
            inter = (pf.to(ftype) @ gf.to(ftype).T).round().to(torch.int64).cpu().numpy()
    area_p, area_g = (np.asarray(to_tensor(count_true(m), torch.device("cpu"))) for m in (pf, gf))
    union = (area_p[:, None] + area_g[None, :] - inter).astype(np.float64)
    return np.divide(inter.astype(np.float64), union, out=np.zeros_like(union), where=union > 0)


def kept_pair(pair: Mapping[str, Any], score_threshold: float = SCORE_THRESHOLD) -> tuple[Any, Any]:
    """(ground truth without crowd, predictions scoring >= ``score_threshold`` in their order)."""
    gt = as_masks(pair["gt"], "gt", empty_ok=True)
    pred = as_masks(pair["pred"], "pred", empty_ok=True)
    scores = as_vector(pair["scores"])
    if scores.shape[0] != pred.shape[0]:
        raise ValueError(f"{pred.shape[0]} predicted masks but {scores.shape[0]} scores")
    crowd = pair.get("gt_iscrowd")
    if crowd is not None:
        crowd = as_vector(crowd).astype(bool)
        if crowd.shape[0] != gt.shape[0]:
            raise ValueError(
                f"{gt.shape[0]} ground-truth masks but {crowd.shape[0]} gt_iscrowd flags"
            )
        gt = select(gt, ~crowd)
    return gt, select(pred, scores >= score_threshold)


def hungarian(iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the one-to-one assignment maximising the total of a (P, G) IoU.

    ``linear_sum_assignment(-iou)`` with predictions as rows, as SA-Co's ``CGF1Eval``: every
    one of the min(P, G) assigned pairs is returned, even at IoU 0 (callers threshold the
    values themselves). Empty index arrays when either side is empty.
    """
    if iou.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return linear_sum_assignment(-iou)


def matched_ious(pred: Any, gt: Any) -> np.ndarray:
    """Per ground-truth mask: IoU of the prediction :func:`hungarian` assigns it, else 0.

    All of ``pred`` takes part (filter by score first, see :func:`matched_instance_ious`).
    Returns float64 (G,).
    """
    iou = pairwise_mask_iou(pred, gt)
    rows, cols = hungarian(iou)
    out = np.zeros(iou.shape[1], dtype=np.float64)
    out[cols] = iou[rows, cols]
    return out


def matched_instance_ious(
    pair: Mapping[str, Any], score_threshold: float = SCORE_THRESHOLD
) -> np.ndarray:
    """Per (non-crowd) ground-truth instance of one pair: its matched IoU, 0 when unmatched.

    The predictions scoring >= ``score_threshold`` (:func:`kept_pair`) are assigned one to
    one to the instances by :func:`matched_ious`. How well the found masks fit, with a missed
    instance counting 0 (float64 (G,)).
    """
    gt, pred = kept_pair(pair, score_threshold)
    return matched_ious(pred, gt)


def mean_matched_iou(
    pairs: Sequence[Mapping[str, Any]], score_threshold: float = SCORE_THRESHOLD
) -> float:
    """:func:`matched_instance_ious` averaged over every instance of every pair (0 if none).

    SAM3's "matched instance IoU" (``mean_iou`` of its evaluation), the analogue of SAM2's
    per-object IoU: each instance weighs the same, negative phrases add nothing.
    """
    values = [matched_instance_ious(p, score_threshold) for p in pairs]
    count = sum(v.size for v in values)
    return sum(float(v.sum()) for v in values) / count if count else 0.0


def max_matching(iou: np.ndarray, threshold: float = MATCH_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Largest one-to-one matching using only pairs with IoU >= threshold.

    Greedy matching (or a plain IoU-maximising Hungarian, which can trade a >= 0.5 pair
    for two high-but-below-0.5 ones) can miss instances. Weights ``[iou >= t] * (M + iou)``
    with ``M`` above the largest possible matching size make the Hungarian maximise the
    number of matched pairs first and their total IoU second (which decides ties, e.g.
    which of two overlapping instances is taken). Returns (row indices, column indices).
    """
    if iou.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ok = iou >= threshold
    big = min(iou.shape) + 1
    rows, cols = linear_sum_assignment(np.where(ok, big + iou, 0.0), maximize=True)
    good = ok[rows, cols]
    return rows[good], cols[good]


def remap_scores(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Monotone map of [0, 1] scores that sends ``threshold`` to exactly 0.5.

    The metric functions keep predictions with score >= 0.5 (the SA-Co contract). Mapping
    ``[0, t) -> [0, 0.5)`` and ``[t, 1] -> [0.5, 1]`` linearly makes that rule "score >= t"
    while keeping every ranking (so mask AP is unchanged). ``t = 0.5`` is the identity.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"score threshold must be within (0, 1), got {threshold}.")
    s = scores.double()
    if threshold == 0.5:
        return scores
    kept = s >= threshold
    high = 0.5 + 0.5 * (s - threshold) / (1.0 - threshold)
    low = torch.clamp(0.5 * s / threshold, max=math.nextafter(0.5, 0.0))
    return torch.where(kept, high.clamp(min=0.5), low).to(scores.dtype)
