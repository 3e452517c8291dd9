"""Segmentation and concept metrics with the exact conventions of the official evaluators.

Two families live here and must not be mixed up (``METRICS.md`` holds the contract):

* Per-instance quality of a prompted mask (SAM2): :func:`mask_iou`, :func:`dice` and
  :func:`boundary_f1` follow DAVIS 2017 (``db_eval_iou`` / ``f_measure``): two empty masks
  agree perfectly (IoU = Dice = 1), the boundary map and the disk-shaped tolerance are the
  ones of DAVIS' ``seg2bmap`` + ``cv2.dilate(disk(r))``.
* Concept detection (SAM3): :func:`saco_metrics` (cgF1, pmF1, IL_MCC), :func:`concept_recall`,
  :func:`grounding_accuracy`, :func:`attribute_accuracy` and :func:`coco_mask_ap` use the
  pycocotools IoU convention, where an empty mask overlaps nothing (IoU 0, even with another
  empty mask), and keep only predictions with score >= 0.5 (:data:`SCORE_THRESHOLD`).

Inputs and outputs are torch tensors (numpy arrays are accepted too) and the work is batched
and device-agnostic: every count is an exact integer, computed by one set of pixel kernels
that run in torch on an accelerator and on zero-copy numpy views on the CPU (see
:func:`_masks` for the measurements behind that), so a GPU gives the same numbers.

A *pair* (SAM3 metrics) is one (image, noun phrase) query::

    {"gt": bool (G, H, W), "pred": bool (P, H, W), "scores": float (P,), "phrase": str,
     # optional:
     "gt_iscrowd": bool (G,),            # crowd ground truth is dropped, as SA-Co does
     "candidates": bool (C, H, W),       # attribute_accuracy only, see there
     "candidate_labels": bool (C,)}

G, P and C may be 0; masks of any dtype are cast to bool (non-zero = foreground); numpy
arrays are accepted wherever tensors are.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment

from sam_hf.data import rle as rle_utils

__all__ = [
    "MATCH_IOU",
    "SACO_IOU_THRESHOLDS",
    "SCORE_THRESHOLD",
    "attribute_accuracy",
    "boundary_f1",
    "boundary_tolerance",
    "coco_mask_ap",
    "concept_recall",
    "dice",
    "disk_footprint",
    "grounding_accuracy",
    "mask_iou",
    "pairwise_mask_iou",
    "per_example_metric",
    "saco_metrics",
    "summarize_instance_metrics",
]

#: Predictions with a score at or above this count as "kept" (SA-Co's ``threshold=0.5``).
SCORE_THRESHOLD = 0.5
#: IoU a prediction needs to count as finding an instance (concept recall, attributes).
MATCH_IOU = 0.5
#: SA-Co / COCO IoU thresholds. ``linspace``, not ``arange``: 0.6 must be exactly 0.6.
SACO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
#: Exact 0/1 matmuls in float32 hold while the number of summed pixels stays below 2**24.
_FLOAT32_EXACT = 1 << 24
#: Elements processed per chunk by the pixel kernels: working sets of about 1 MB stay in
#: the CPU caches (whole 20 x 720 x 1280 batches ran ~3x slower here).
_CACHE_BUDGET = 1 << 20
#: Crops up to this many pixels share a batch regardless of how much smaller the others are.
_DILATE_MIN_BUCKET = 64 * 64


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


def _masks(x: Any, name: str, empty_ok: bool = False) -> Any:
    """(N, H, W) masks as bool: numpy for CPU tensors, arrays and lists; torch elsewhere.

    Every pixel kernel below is written once against what numpy and torch share (slices,
    ``|=``, ``^``, ``xp.bitwise_or(out=)``, ``xp.stack`` ...). CPU data goes through
    numpy -- CPU tensors as zero-copy views: measured on the project's 2-core box, each
    torch CPU op paid ~8-15 ms of OpenMP synchronisation whenever the other core was busy
    (numpy: 0.05-0.1 ms for the same 720x1280 XOR) and its bool reductions were 40-100x
    slower than ``np.count_nonzero``. Tensors on an accelerator stay there, in torch.
    ``empty_ok`` also accepts an empty stack given as shape (0,).
    """
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.bool:
            x = x != 0
        if x.device.type == "cpu":
            x = x.numpy()
    else:
        x = np.asarray(x)
        if x.dtype != bool:
            x = x != 0
    if empty_ok and x.ndim != 3 and math.prod(x.shape) == 0:
        return _zeros(x, (0, 0, 0))
    if x.ndim != 3:
        raise ValueError(f"`{name}` must have shape (N, H, W); got {tuple(x.shape)}")
    return x


def _device(a: Any) -> torch.device:
    return torch.device("cpu") if isinstance(a, np.ndarray) else a.device


def _xp(a: Any) -> Any:
    return np if isinstance(a, np.ndarray) else torch


def _same_place(a: Any, b: Any) -> tuple[Any, Any]:
    """Bring two mask arrays to one device (a CPU/numpy one moves to the accelerator)."""
    if isinstance(a, np.ndarray) and isinstance(b, torch.Tensor):
        return torch.from_numpy(a).to(b.device), b
    if isinstance(b, np.ndarray) and isinstance(a, torch.Tensor):
        return a, torch.from_numpy(b).to(a.device)
    if isinstance(a, torch.Tensor) and a.device != b.device:
        raise ValueError(f"masks on different devices: {a.device} and {b.device}")
    return a, b


def _pred_gt(pred: Any, gt: Any) -> tuple[Any, Any]:
    p, g = _same_place(_masks(pred, "pred"), _masks(gt, "gt"))
    if p.shape != g.shape:
        raise ValueError(
            f"`pred` and `gt` must have the same shape (N, H, W); got {tuple(p.shape)} "
            f"and {tuple(g.shape)}"
        )
    return p, g


def _result_dtype(device: torch.device) -> torch.dtype:
    # float64 so the values equal the numpy references bit for bit; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _to_tensor(a: Any, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a.to(device)


def _count(x: Any) -> Any:
    """Number of True pixels per instance of a bool (N, ...) array, int64 (N,), same kind."""
    if x.shape[0] == 0:
        return _int_zeros(x, 0)
    flat = x.reshape(x.shape[0], -1)
    if isinstance(flat, np.ndarray):
        # count_nonzero over a whole contiguous row is SIMD; with axis= it is ~10x slower
        return np.array([np.count_nonzero(row) for row in flat], dtype=np.int64)
    return flat.sum(1)


def _zeros(like: Any, shape: tuple[int, ...]) -> Any:
    if isinstance(like, np.ndarray):
        return np.zeros(shape, dtype=like.dtype)
    return like.new_zeros(shape)


def _int_zeros(like: Any, n: int) -> Any:
    if isinstance(like, np.ndarray):
        return np.zeros(n, dtype=np.int64)
    return torch.zeros(n, dtype=torch.int64, device=like.device)


def _copy(x: Any) -> Any:
    return x.copy() if isinstance(x, np.ndarray) else x.clone()


def _nonzero(x: Any) -> list[int]:
    if isinstance(x, np.ndarray):
        return np.flatnonzero(x).tolist()
    return torch.nonzero(x.reshape(-1)).reshape(-1).tolist()


def _first_last(any_along: Any) -> tuple[list[int], list[int]]:
    """Index of the first and of the last True along dim 1 of a bool (N, L) array."""
    if isinstance(any_along, np.ndarray):
        first, rev = any_along.argmax(1), any_along[:, ::-1].argmax(1)
    else:
        as_int = any_along.to(torch.uint8)
        first, rev = as_int.argmax(1), as_int.flip(1).argmax(1)
    last = any_along.shape[1] - 1 - rev
    return first.tolist(), last.tolist()


def _chunks(n: int, per_item: int, budget: int = _CACHE_BUDGET) -> list[slice]:
    """Split range(n) into slices of about ``budget`` elements (at least one item each)."""
    step = max(1, budget // max(1, per_item))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


# --------------------------------------------------------------------------------------
# DAVIS per-instance metrics
# --------------------------------------------------------------------------------------


def _overlap_counts(pred: Any, gt: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(|P & G|, |P|, |G|) per instance as int64 tensors on the inputs' device."""
    p, g = _pred_gt(pred, gt)
    n, h, w = p.shape
    inter, area_p, area_g = _int_zeros(p, n), _int_zeros(p, n), _int_zeros(p, n)
    for part in _chunks(n, h * w):
        inter[part] = _count(p[part] & g[part])
        area_p[part] = _count(p[part])
        area_g[part] = _count(g[part])
    device = _device(p)
    return _to_tensor(inter, device), _to_tensor(area_p, device), _to_tensor(area_g, device)


def mask_iou(pred: Any, gt: Any) -> torch.Tensor:
    """Per-instance IoU |P & G| / |P | G| of two (N, H, W) mask stacks -> (N,) float.

    DAVIS convention (``db_eval_iou``): two empty masks agree, so their IoU is 1. This is
    the score SAM2 fine-tuning reports; the SAM3 metrics use :func:`pairwise_mask_iou`.
    Returns float64 (float32 on MPS) on the inputs' device.
    """
    inter, area_p, area_g = _overlap_counts(pred, gt)
    union = area_p + area_g - inter
    out = inter.to(_result_dtype(inter.device)) / union.clamp(min=1)
    return torch.where(union == 0, torch.ones_like(out), out)


def dice(pred: Any, gt: Any) -> torch.Tensor:
    """Per-instance Dice 2|P & G| / (|P| + |G|) of (N, H, W) stacks -> (N,) float.

    Same empty rule as :func:`mask_iou`: both empty gives 1.
    """
    inter, area_p, area_g = _overlap_counts(pred, gt)
    total = area_p + area_g
    out = (2 * inter).to(_result_dtype(inter.device)) / total.clamp(min=1)
    return torch.where(total == 0, torch.ones_like(out), out)


def boundary_tolerance(bound_th: float, height: int, width: int) -> float:
    """DAVIS tolerance radius in pixels.

    ``bound_th >= 1`` is already a radius in pixels (kept as given, even when not an
    integer); below 1 it is a fraction of the image diagonal, rounded up:
    ``ceil(bound_th * sqrt(H^2 + W^2))`` -- 0.008 on 1280x720 gives 12.
    """
    th = float(bound_th)
    if not th >= 0:  # also rejects NaN
        raise ValueError(f"bound_th must be >= 0 (a fraction < 1 or pixels >= 1); got {bound_th}")
    if th >= 1:
        return th
    # sqrt of an exact integer is what numpy's norm of the shape gives, bit for bit.
    return float(math.ceil(th * math.sqrt(height * height + width * width)))


def disk_footprint(radius: float) -> np.ndarray:
    """Disk of ``radius`` as skimage's ``disk(radius)`` builds it: a bool (k, k) array.

    The grid is ``np.arange(-radius, radius + 1)`` on both axes and a cell is inside when
    ``x^2 + y^2 <= radius^2``. An integer radius gives a centred (2r+1)-square; a
    non-integer one gives a grid of even size whose cells sit at half-integers, which
    OpenCV then anchors at ``k // 2`` -- one pixel off centre. We reproduce both.
    """
    grid = np.arange(-radius, radius + 1)
    sq = grid * grid
    return (sq[None, :] + sq[:, None]) <= radius * radius


def _footprint_runs(radius: float, height: int, width: int) -> list[tuple[int, int, int]]:
    """Footprint of :func:`disk_footprint` as (dy, dx_lo, dx_hi) horizontal runs.

    Offsets are relative to OpenCV's default anchor (``k // 2`` on both axes); a dilated
    pixel (y, x) is the OR of the source over (y + dy, x + dx) for dx in [dx_lo, dx_hi].
    Rows and columns farther than the image extent are dropped (they only ever look
    outside the image), which keeps huge radii cheap.
    """
    grid = np.arange(-radius, radius + 1)
    anchor = len(grid) // 2
    lo_i, hi_i = max(0, anchor - height + 1), min(len(grid), anchor + height)
    lo_j, hi_j = max(0, anchor - width + 1), min(len(grid), anchor + width)
    sq = grid * grid
    inside = (sq[lo_i:hi_i, None] + sq[None, lo_j:hi_j]) <= radius * radius
    runs = []
    for r, row in enumerate(inside):
        cols = np.flatnonzero(row)
        if cols.size == 0:
            continue
        # a disk row is one interval, but split at gaps to stay exact for any footprint
        breaks = np.flatnonzero(np.diff(cols) > 1)
        starts = np.concatenate([[0], breaks + 1])
        ends = np.concatenate([breaks, [cols.size - 1]])
        for s, e in zip(starts, ends):
            dy = lo_i + r - anchor
            runs.append((dy, int(cols[s]) + lo_j - anchor, int(cols[e]) + lo_j - anchor))
    return runs


def _or_shifted(dst: Any, src: Any, dy: int, dx: int) -> None:
    """In place ``dst[..., y, x] |= src[..., y + dy, x + dx]`` where that index exists."""
    h, w = src.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return
    ys_dst, ys_src = (
        (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    )
    xs_dst, xs_src = (
        (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    )
    view = dst[..., ys_dst, xs_dst]
    view |= src[..., ys_src, xs_src]  # in place on the view, numpy and torch alike


def _dilate(x: Any, runs: list[tuple[int, int, int]], xp: Any) -> Any:
    """Binary dilation of a bool (..., H, W) stack by a footprint given as horizontal runs.

    Equal to ``cv2.dilate`` with the same footprint and anchor (pixels outside the image
    never contribute). Rather than a k x k convolution (O(r^2) work per pixel), each
    distinct run [lo, hi] is a horizontal window-OR taken from a sparse table of
    power-of-two windows (two lookups; the input is zero-padded so windows that hang
    over the edge stay exact) and OR-ed in at every row offset that uses it: a radius-r
    disk costs about log2(2r) + 3r in-place passes.
    """
    width = x.shape[-1]
    out = xp.zeros_like(x)
    by_window: dict[tuple[int, int], list[int]] = defaultdict(list)
    for dy, lo, hi in runs:
        by_window[(lo, hi)].append(dy)
    wide = [key for key in by_window if key[0] != key[1]]
    if wide:
        left = max(0, -min(lo for lo, _ in wide))
        right = max(0, max(hi for _, hi in wide))
        padded = _zeros(x, (*x.shape[:-1], left + width + right))
        padded[..., left : left + width] = x
        table = [padded]  # table[j][..., z] = OR of padded[..., z : z + 2**j]
        window = xp.empty_like(x)
    for (lo, hi), dys in by_window.items():
        if lo == hi:  # a single column: a plain shift
            for dy in dys:
                _or_shifted(out, x, dy, lo)
            continue
        level = (hi - lo + 1).bit_length() - 1
        while len(table) <= level:
            nxt = _copy(table[-1])
            _or_shifted(nxt, table[-1], 0, 1 << (len(table) - 1))
            table.append(nxt)
        a, b = left + lo, left + hi - (1 << level) + 1
        xp.bitwise_or(
            table[level][..., a : a + width], table[level][..., b : b + width], out=window
        )
        for dy in dys:
            _or_shifted(out, window, dy, 0)
    return out


def _boundary_map(seg: Any, xp: Any) -> Any:
    """DAVIS ``seg2bmap`` on a bool (N, H, W) stack.

    A pixel is boundary where it differs from its east, south or south-east neighbour;
    on the last row only east counts, on the last column only south, and the
    bottom-right pixel never is.
    """
    n, h, w = seg.shape
    b = xp.zeros_like(seg)
    for part in _chunks(n, h * w):
        s, out = seg[part], b[part]
        centre, inner = s[:, :-1, :-1], out[:, :-1, :-1]
        xp.bitwise_xor(centre, s[:, :-1, 1:], out=inner)
        inner |= centre ^ s[:, 1:, :-1]
        inner |= centre ^ s[:, 1:, 1:]
        xp.bitwise_xor(s[:, -1, :-1], s[:, -1, 1:], out=out[:, -1, :-1])
        xp.bitwise_xor(s[:, :-1, -1], s[:, 1:, -1], out=out[:, :-1, -1])
    return b


def _crop_buckets(areas: list[int], heights: list[int], widths: list[int]) -> list[list[int]]:
    """Group crop indices so that padding each group to its largest crop wastes little.

    Sorted by area, a group grows while its padded size stays within twice the first
    (smallest) crop's area (or :data:`_DILATE_MIN_BUCKET`) and the whole group within
    :data:`_CACHE_BUDGET` elements.
    """
    order = sorted(range(len(areas)), key=lambda i: areas[i])
    buckets: list[list[int]] = []
    cur: list[int] = []
    cap = mh = mw = 0
    for i in order:
        nh, nw = max(mh, heights[i]), max(mw, widths[i])
        if cur and (nh * nw > cap or (len(cur) + 1) * nh * nw > _CACHE_BUDGET):
            buckets.append(cur)
            cur = []
            nh, nw = heights[i], widths[i]
        if not cur:
            cap = max(2 * areas[i], _DILATE_MIN_BUCKET)
        cur.append(i)
        mh, mw = nh, nw
    if cur:
        buckets.append(cur)
    return buckets


def _boundary_matches(
    bp: Any, bg: Any, runs: list[tuple[int, int, int]], xp: Any
) -> tuple[Any, Any]:
    """|B_pred & dilate(B_gt)| and |B_gt & dilate(B_pred)| per instance, int64 (N,).

    Both boundaries of an instance lie inside their joint bounding box and the dilation
    only ever reads boundary pixels, so each instance is cropped to that box (moved
    inwards when it would cross the image edge, which only adds real pixels) and crops
    of similar size are dilated together. Exact, and small objects cost little.
    """
    n, h, w = bp.shape
    match_p, match_g = _int_zeros(bp, n), _int_zeros(bp, n)
    rows_any = bp.any(2) | bg.any(2)
    cols_any = bp.any(1) | bg.any(1)
    idx = _nonzero(rows_any.any(1))
    if not idx:
        return match_p, match_g
    y0, y1 = _first_last(rows_any)
    x0, x1 = _first_last(cols_any)
    heights = [y1[i] - y0[i] + 1 for i in idx]
    widths = [x1[i] - x0[i] + 1 for i in idx]
    areas = [a * b for a, b in zip(heights, widths)]
    for bucket in _crop_buckets(areas, heights, widths):
        inst = [idx[k] for k in bucket]
        ch = max(heights[k] for k in bucket)
        cw = max(widths[k] for k in bucket)
        # crops copied by slicing (torch's CPU advanced indexing was ~20x slower here)
        boxes = [(i, min(y0[i], h - ch), min(x0[i], w - cw)) for i in inst]
        crop_p = xp.stack([bp[i, y : y + ch, x : x + cw] for i, y, x in boxes])
        crop_g = xp.stack([bg[i, y : y + ch, x : x + cw] for i, y, x in boxes])
        match_p[inst] = _count(crop_p & _dilate(crop_g, runs, xp))
        match_g[inst] = _count(crop_g & _dilate(crop_p, runs, xp))
    return match_p, match_g


def boundary_f1(pred: Any, gt: Any, bound_th: float = 0.008) -> torch.Tensor:
    """DAVIS 2017 boundary F-measure per instance of (N, H, W) stacks -> (N,) float.

    Precision is the share of the predicted 1-pixel boundary lying within the tolerance
    disk of the true boundary, recall the converse; F = 2PR / (P + R) (0 when P + R = 0).
    Both boundaries empty -> P = R = 1 (F = 1); only the prediction's empty -> P = 1,
    R = 0; only the truth's empty -> P = 0, R = 1 (F = 0 for both one-sided cases).
    The tolerance is :func:`boundary_tolerance` of ``bound_th`` (0.008 of the diagonal by
    default); the dilation is exact (see :func:`disk_footprint` for even-sized disks).
    Returns float64 (float32 on MPS) on the inputs' device.
    """
    p, g = _pred_gt(pred, gt)
    return _boundary_f1_arrays(p, g, bound_th, _xp(p), _device(p))


def _boundary_f1_arrays(
    pa: Any, ga: Any, bound_th: float, xp: Any, device: torch.device
) -> torch.Tensor:
    """:func:`boundary_f1` on bool arrays of module ``xp`` (numpy or torch)."""
    n, h, w = pa.shape
    dtype = _result_dtype(device)
    radius = boundary_tolerance(bound_th, h, w)
    if n == 0 or h == 0 or w == 0:  # no pixels, so no boundary on either side
        return torch.ones(n, dtype=dtype, device=device)
    bp, bg = _boundary_map(pa, xp), _boundary_map(ga, xp)
    counts = (_count(bp), _count(bg), *_boundary_matches(bp, bg, _footprint_runs(radius, h, w), xp))
    n_p, n_g, match_p, match_g = (_to_tensor(c, device) for c in counts)
    precision = match_p.to(dtype) / n_p.clamp(min=1)
    recall = match_g.to(dtype) / n_g.clamp(min=1)
    one, zero = torch.ones_like(precision), torch.zeros_like(precision)
    precision = torch.where(n_p == 0, one, torch.where(n_g == 0, zero, precision))
    recall = torch.where(n_g == 0, one, torch.where(n_p == 0, zero, recall))
    denom = precision + recall
    f = 2 * precision * recall / torch.where(denom > 0, denom, one)
    return torch.where(denom > 0, f, zero)


def summarize_instance_metrics(pred: Any, gt: Any, bound_th: float = 0.008) -> dict[str, float]:
    """Means of :func:`mask_iou`, :func:`dice` and :func:`boundary_f1` over N instances.

    Keys ``mean_iou``, ``mean_dice``, ``mean_boundary_f1`` (the names the SAM2 recipe
    writes to ``eval_results.json``); NaN when N = 0, since there is nothing to average.
    """
    p, g = _pred_gt(pred, gt)
    if p.shape[0] == 0:
        nan = float("nan")
        return {"mean_iou": nan, "mean_dice": nan, "mean_boundary_f1": nan}
    return {
        "mean_iou": float(mask_iou(p, g).mean()),
        "mean_dice": float(dice(p, g).mean()),
        "mean_boundary_f1": float(boundary_f1(p, g, bound_th).mean()),
    }


def per_example_metric(
    metric: Callable[..., torch.Tensor],
    predictions: Sequence[Any],
    references: Sequence[Any],
    **kwargs: Any,
) -> np.ndarray:
    """Apply :func:`mask_iou`, :func:`dice` or :func:`boundary_f1` to lists of 2-D masks.

    Examples may differ in size (validation images often do); masks of equal size are
    stacked into one batch, which changes nothing since the metrics are per instance.
    Returns float64 (N,) in input order. Used by the ``evaluate`` metric modules.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    preds = [np.asarray(p) for p in predictions]
    refs = [np.asarray(r) for r in references]
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (p, r) in enumerate(zip(preds, refs)):
        if p.ndim != 2 or p.shape != r.shape:
            raise ValueError(
                f"example {i}: prediction {p.shape} and reference {r.shape} must be equal 2-D masks"
            )
        groups[p.shape].append(i)
    out = np.zeros(len(preds), dtype=np.float64)
    for idx in groups.values():
        batch_p = np.stack([preds[i] for i in idx]).astype(bool)
        batch_r = np.stack([refs[i] for i in idx]).astype(bool)
        out[idx] = metric(torch.from_numpy(batch_p), torch.from_numpy(batch_r), **kwargs).numpy()
    return out


# --------------------------------------------------------------------------------------
# SAM3 concept metrics
# --------------------------------------------------------------------------------------


def _intersections_numpy(pf: np.ndarray, gf: np.ndarray) -> np.ndarray:
    """|p_i & g_j| for bool (P, L) and (G, L) rows, int64 (P, G).

    Bit-packed AND + popcount (numpy >= 2): 8 pixels a byte, measured ~4x faster here
    than a float32 matmul, whose cast alone writes 4 bytes per pixel. Exact either way.
    """
    if not hasattr(np, "bitwise_count"):  # numpy < 2: exact float matmul instead
        ftype = np.float32 if pf.shape[1] < _FLOAT32_EXACT else np.float64
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
    p, g = _masks(pred, "pred", empty_ok=True), _masks(gt, "gt", empty_ok=True)
    if p.shape[0] == 0 or g.shape[0] == 0:
        return np.zeros((p.shape[0], g.shape[0]), dtype=np.float64)
    if p.shape[1:] != g.shape[1:]:
        raise ValueError(
            f"predicted and ground-truth masks differ in size: {tuple(p.shape[1:])} vs "
            f"{tuple(g.shape[1:])}"
        )
    p, g = _same_place(p, g)
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
        ftype = torch.float32 if pf.shape[1] < _FLOAT32_EXACT else torch.float64
        with torch.autocast(device_type=pf.device.type, enabled=False):
            inter = (pf.to(ftype) @ gf.to(ftype).T).round().to(torch.int64).cpu().numpy()
    area_p, area_g = (np.asarray(_to_tensor(_count(m), torch.device("cpu"))) for m in (pf, gf))
    union = (area_p[:, None] + area_g[None, :] - inter).astype(np.float64)
    return np.divide(inter.astype(np.float64), union, out=np.zeros_like(union), where=union > 0)


def _vector(x: Any) -> np.ndarray:
    """Scores or flags as a 1-D numpy array, dtype kept (float64 scores stay float64)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # exact; numpy has no bfloat16
        x = x.cpu().numpy()
    return np.asarray(x).reshape(-1)


def _select(masks: Any, keep: np.ndarray) -> Any:
    if isinstance(masks, np.ndarray):
        return masks[keep]
    return masks[torch.from_numpy(keep).to(masks.device)]


def _kept_pair(pair: Mapping[str, Any]) -> tuple[Any, Any]:
    """(ground truth without crowd, predictions with score >= 0.5 in their order)."""
    gt = _masks(pair["gt"], "gt", empty_ok=True)
    pred = _masks(pair["pred"], "pred", empty_ok=True)
    scores = _vector(pair["scores"])
    if scores.shape[0] != pred.shape[0]:
        raise ValueError(f"{pred.shape[0]} predicted masks but {scores.shape[0]} scores")
    crowd = pair.get("gt_iscrowd")
    if crowd is not None:
        crowd = _vector(crowd).astype(bool)
        if crowd.shape[0] != gt.shape[0]:
            raise ValueError(
                f"{gt.shape[0]} ground-truth masks but {crowd.shape[0]} gt_iscrowd flags"
            )
        gt = _select(gt, ~crowd)
    return gt, _select(pred, scores >= SCORE_THRESHOLD)


def _max_matching(iou: np.ndarray, threshold: float = MATCH_IOU) -> tuple[np.ndarray, np.ndarray]:
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


def saco_metrics(pairs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """SA-Co detection metrics of SAM3 (``CGF1Eval``), on a 0-1 scale.

    Per pair, predictions with score >= 0.5 are kept and matched once to the (non-crowd)
    ground truth by a Hungarian assignment maximising pycocotools mask IoU
    (``linear_sum_assignment(-iou)``, predictions as rows); at each threshold t of
    :data:`SACO_IOU_THRESHOLDS` a matched pair with IoU >= t is a TP, the other kept
    predictions FPs, the unmatched ground truth FNs.

    * ``pmF1`` (positive micro F1): TP/FP/FN summed over the pairs that HAVE ground truth
      only -- false positives on negative phrases do not enter it -- with
      P = TP/(TP+FP+1e-4), R = TP/(TP+FN+1e-4), F1 = 2PR/(P+R+1e-4); mean over t.
    * ``IL_MCC``: Matthews correlation over ALL pairs of "has ground truth" against "has a
      kept prediction" (+1e-6 in the denominator); independent of t.
    * ``cgF1`` = mean over t of pmF1_t x IL_MCC; ``cgF1_50`` and ``cgF1_75`` at t = 0.5, 0.75.

    A pair without ground truth and predictions is only an image-level true negative;
    predictions without ground truth only an image-level false positive; ground truth
    without predictions G false negatives at every t (and an image-level false negative).
    """
    thresholds = SACO_IOU_THRESHOLDS
    tp = np.zeros(len(thresholds), dtype=np.int64)
    fp = np.zeros_like(tp)
    fn = np.zeros_like(tp)
    il_tp = il_fp = il_tn = il_fn = 0
    for pair in pairs:
        gt, pred = _kept_pair(pair)
        n_gt, n_pred = gt.shape[0], pred.shape[0]
        if n_gt and n_pred:
            il_tp += 1
        elif n_pred:
            il_fp += 1
        elif n_gt:
            il_fn += 1
        else:
            il_tn += 1
        if n_gt == 0:
            continue
        iou = pairwise_mask_iou(pred, gt)
        if n_pred:
            rows, cols = linear_sum_assignment(-iou)
            matched = iou[rows, cols]
        else:
            matched = np.zeros(0)
        tp_t = (matched[None, :] >= thresholds[:, None]).sum(1)
        tp += tp_t
        fp += n_pred - tp_t
        fn += n_gt - tp_t
    precision = tp / (tp + fp + 1e-4)
    recall = tp / (tp + fn + 1e-4)
    pm_f1 = 2 * precision * recall / (precision + recall + 1e-4)
    mcc = float(il_tp * il_tn - il_fp * il_fn) / (
        (float(il_tp + il_fp) * float(il_tp + il_fn) * float(il_tn + il_fp) * float(il_tn + il_fn))
        ** 0.5
        + 1e-6
    )
    cg_f1 = pm_f1 * mcc
    i50 = int(np.flatnonzero(thresholds == 0.5)[0])
    i75 = int(np.flatnonzero(thresholds == 0.75)[0])
    return {
        "cgF1": float(np.mean(cg_f1)),
        "pmF1": float(np.mean(pm_f1)),
        "IL_MCC": mcc,
        "cgF1_50": float(cg_f1[i50]),
        "cgF1_75": float(cg_f1[i75]),
    }


def concept_recall(pairs: Sequence[Mapping[str, Any]]) -> float:
    """Share of ground-truth instances found, per phrase, averaged over phrases.

    For each pair with (non-crowd) ground truth, the matched count is the size of the
    largest one-to-one matching between its G instances and its kept predictions
    (score >= 0.5) using only pairs with pycocotools IoU >= 0.5 (maximum cardinality, so
    neither greedy order nor IoU-maximising assignment can lose an instance). Pairs are
    grouped by ``phrase``: a phrase's recall is (sum of matched) / (sum of G) over its
    pairs -- every instance weighs the same within a phrase -- and the result is the
    unweighted mean over phrases that have ground truth somewhere, so rare concepts count
    as much as frequent ones. NaN when no pair has ground truth.
    """
    per_phrase: dict[str, list[int]] = {}
    for pair in pairs:
        if "phrase" not in pair:
            raise KeyError("concept_recall groups pairs by phrase: every pair needs a 'phrase'")
        gt, pred = _kept_pair(pair)
        if gt.shape[0] == 0:
            continue
        rows, _ = _max_matching(pairwise_mask_iou(pred, gt))
        counts = per_phrase.setdefault(str(pair["phrase"]), [0, 0])
        counts[0] += len(rows)
        counts[1] += gt.shape[0]
    if not per_phrase:
        return float("nan")
    return float(np.mean([m / g for m, g in per_phrase.values()]))


def grounding_accuracy(pairs: Sequence[Mapping[str, Any]]) -> float:
    """Share of ALL pairs (positive and negative phrases) whose presence is right.

    A pair is right when "has (non-crowd) ground truth" equals "has a prediction with
    score >= 0.5" -- presence is decided from the predicted masks, never by comparing
    strings. NaN for an empty list.
    """
    if not pairs:
        return float("nan")
    right = 0
    for pair in pairs:
        gt, pred = _kept_pair(pair)
        right += (gt.shape[0] > 0) == (pred.shape[0] > 0)
    return right / len(pairs)


def attribute_accuracy(pairs: Sequence[Mapping[str, Any]]) -> float | None:
    """Share of candidate instances an attribute phrase correctly includes or excludes.

    An attribute phrase ("ripe red apple") must pick some instances of its base category
    and leave the others. Pairs that carry the optional keys

    * ``candidates``: bool (C, H, W), every instance of the base category in the image;
    * ``candidate_labels``: bool (C,), whether the phrase describes that instance;

    are scored; others are ignored. A candidate is *included* when a kept prediction
    (score >= 0.5) is matched to it in the largest one-to-one matching with IoU >= 0.5
    (the matching of :func:`concept_recall`, ties broken by the larger total IoU). It is
    correct when included == label. The result is correct / C summed over all scored
    pairs (each instance weighs the same), or None when no pair carries the keys or
    they hold no candidate.
    """
    correct = total = 0
    for pair in pairs:
        has_c, has_l = "candidates" in pair, "candidate_labels" in pair
        if not (has_c or has_l):
            continue
        if has_c != has_l:
            raise KeyError("attribute_accuracy needs both 'candidates' and 'candidate_labels'")
        cand = _masks(pair["candidates"], "candidates", empty_ok=True)
        labels = _vector(pair["candidate_labels"]).astype(bool)
        if labels.shape[0] != cand.shape[0]:
            raise ValueError(f"{cand.shape[0]} candidates but {labels.shape[0]} candidate_labels")
        _, pred = _kept_pair(pair)
        included = np.zeros(cand.shape[0], dtype=bool)
        _, cols = _max_matching(pairwise_mask_iou(pred, cand))
        included[cols] = True
        correct += int((included == labels).sum())
        total += cand.shape[0]
    return correct / total if total else None


# --------------------------------------------------------------------------------------
# COCO mask AP
# --------------------------------------------------------------------------------------


def _numpy_masks(x: Any, name: str) -> np.ndarray:
    masks = _masks(x, name, empty_ok=True)
    return masks if isinstance(masks, np.ndarray) else masks.cpu().numpy()


def _encode_many(masks: np.ndarray) -> list[dict[str, Any]]:
    """Bool (N, H, W) -> compressed RLEs in one pycocotools call.

    Same output as ``sam_hf.data.rle.encode`` per mask, with one batched transpose to the
    column-major (H, W, N) layout pycocotools wants and one encode call per image.
    """
    if len(masks) == 0:
        return []
    fortran = np.ascontiguousarray(masks.view(np.uint8).transpose(0, 2, 1)).transpose(2, 1, 0)
    return [
        {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}
        for r in mask_utils.encode(fortran)
    ]


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_stat(
    ev: COCOeval, ap: bool, iou: float | None = None, area: str = "all", max_dets: int = -1
) -> float:
    """One COCO summary number, by default at the largest maxDets.

    ``COCOeval.summarize`` hard-codes maxDets=100 for its first AP and so reports -1 once
    maxDets is raised; this reads ``eval['precision'|'recall']`` directly instead, with
    the same "-1 = undefined" convention (e.g. no ground truth in that area range).
    """
    p = ev.params
    s = ev.eval["precision"] if ap else ev.eval["recall"]
    if iou is not None:
        s = s[np.flatnonzero(p.iouThrs == iou)]
    s = s[..., p.areaRngLbl.index(area), max_dets]
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def coco_mask_ap(images: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """COCO mask AP/AR through pycocotools ``COCOeval(iouType="segm")``.

    ``images``: one entry per image (or per image and category) with ``gt`` bool
    (G, H, W), ``pred`` bool (P, H, W), ``scores`` (P,), optional ``gt_iscrowd`` (G,) and
    optional ``category`` (else ``phrase``, else one shared category): AP is computed
    per category and averaged, as COCO does. Masks are RLE-encoded in memory.

    ``maxDets`` is ``[1, 10, max(100, most instances or predictions in one entry)]``: the
    default cap of 100 silently drops detections on 123-apple MinneApple images. All
    numbers use the largest maxDets; -1 means undefined (pycocotools' convention, e.g.
    ``mask_AP_small`` when there is no small object). Returns ``mask_AP`` (IoU
    .50:.95), ``mask_AP50``, ``mask_AP75``, ``mask_AP_small|medium|large``, ``mask_AR1``,
    ``mask_AR10``, ``mask_AR`` and ``mask_AR_small|medium|large``.
    """
    if not images:
        raise ValueError("coco_mask_ap needs at least one image")
    cat_ids: dict[str, int] = {}
    img_infos: list[dict] = []
    gt_anns: list[dict] = []
    dt_anns: list[dict] = []
    most = 0
    for image_id, entry in enumerate(images, start=1):
        gt = _numpy_masks(entry["gt"], "gt")
        pred = _numpy_masks(entry["pred"], "pred")
        scores = _vector(entry["scores"]).astype(np.float64)
        if scores.shape[0] != pred.shape[0]:
            raise ValueError(
                f"image {image_id - 1}: {pred.shape[0]} masks but {scores.shape[0]} scores"
            )
        if gt.shape[0] and pred.shape[0] and gt.shape[1:] != pred.shape[1:]:
            raise ValueError(
                f"image {image_id - 1}: gt masks {gt.shape[1:]} and predicted masks "
                f"{pred.shape[1:]} differ in size"
            )
        height, width = (gt if gt.shape[0] or not pred.shape[0] else pred).shape[1:]
        name = str(entry.get("category", entry.get("phrase", "object")))
        cat = cat_ids.setdefault(name, len(cat_ids) + 1)
        img_infos.append({"id": image_id, "height": int(height), "width": int(width)})
        crowd = entry.get("gt_iscrowd")
        crowd = np.zeros(gt.shape[0], dtype=bool) if crowd is None else _vector(crowd).astype(bool)
        if crowd.shape[0] != gt.shape[0]:
            raise ValueError(
                f"image {image_id - 1}: {gt.shape[0]} masks but {crowd.shape[0]} gt_iscrowd"
            )
        most = max(most, gt.shape[0], pred.shape[0])
        for masks, anns, extra in ((gt, gt_anns, crowd), (pred, dt_anns, scores)):
            rles = _encode_many(masks)
            areas, boxes = rle_utils.area(rles), rle_utils.to_bbox(rles)
            for k, rle in enumerate(rles):
                ann = {
                    "id": len(anns) + 1,  # COCOeval stores ids as match flags: never 0
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": rle,
                    "area": float(areas[k]),
                    "bbox": boxes[k].tolist(),
                }
                if anns is gt_anns:
                    ann["iscrowd"] = int(extra[k])
                else:
                    ann["iscrowd"] = 0
                    ann["score"] = float(extra[k])
                anns.append(ann)
    categories = [{"id": i, "name": n} for n, i in cat_ids.items()]
    ev = COCOeval(
        _coco(img_infos, categories, gt_anns), _coco(img_infos, categories, dt_anns), "segm"
    )
    ev.params.maxDets = [1, 10, max(100, most)]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return {
        "mask_AP": _coco_stat(ev, True),
        "mask_AP50": _coco_stat(ev, True, iou=0.5),
        "mask_AP75": _coco_stat(ev, True, iou=0.75),
        "mask_AP_small": _coco_stat(ev, True, area="small"),
        "mask_AP_medium": _coco_stat(ev, True, area="medium"),
        "mask_AP_large": _coco_stat(ev, True, area="large"),
        "mask_AR1": _coco_stat(ev, False, max_dets=0),
        "mask_AR10": _coco_stat(ev, False, max_dets=1),
        "mask_AR": _coco_stat(ev, False),
        "mask_AR_small": _coco_stat(ev, False, area="small"),
        "mask_AR_medium": _coco_stat(ev, False, area="medium"),
        "mask_AR_large": _coco_stat(ev, False, area="large"),
    }


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
