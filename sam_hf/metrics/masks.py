"""Per-instance quality of a prompted mask (SAM2): IoU, Dice and Boundary F1, DAVIS style.

:func:`mask_iou`, :func:`dice` and :func:`boundary_f1` follow DAVIS 2017 (``db_eval_iou`` /
``f_measure``, the contract is in ``METRICS.md``): two empty masks agree perfectly (IoU =
Dice = 1), and the boundary map and the disk-shaped tolerance are those of DAVIS'
``seg2bmap`` + ``cv2.dilate(disk(r))``, reproduced exactly without OpenCV. The SAM3 concept
metrics use another convention (pycocotools IoU, see :mod:`sam_hf.metrics.matching`); the
two must not be mixed up.

Inputs are (N, H, W) stacks of instance masks (tensors, arrays or lists, any dtype: non-zero
is foreground); outputs are (N,) float64 tensors (float32 on MPS) on the inputs' device.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sam_hf.metrics.arrays import (
    CACHE_BUDGET,
    array_module,
    chunks,
    copy_of,
    count_true,
    device_of,
    first_last,
    int_zeros,
    nonzero_indices,
    pred_and_gt,
    result_dtype,
    to_tensor,
    zeros,
)

__all__ = [
    "boundary_f1",
    "boundary_tolerance",
    "dice",
    "disk_footprint",
    "mask_iou",
    "per_example_metric",
    "summarize_instance_metrics",
]

#: Crops up to this many pixels share a batch regardless of how much smaller the others are.
_DILATE_MIN_BUCKET = 64 * 64


def _overlap_counts(pred: Any, gt: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(|P & G|, |P|, |G|) per instance as int64 tensors on the inputs' device."""
    p, g = pred_and_gt(pred, gt)
    n, h, w = p.shape
    inter, area_p, area_g = int_zeros(p, n), int_zeros(p, n), int_zeros(p, n)
    for part in chunks(n, h * w):
        inter[part] = count_true(p[part] & g[part])
        area_p[part] = count_true(p[part])
        area_g[part] = count_true(g[part])
    device = device_of(p)
    return to_tensor(inter, device), to_tensor(area_p, device), to_tensor(area_g, device)


def mask_iou(pred: Any, gt: Any) -> torch.Tensor:
    """Per-instance IoU |P & G| / |P | G| of two (N, H, W) mask stacks -> (N,) float.

    DAVIS convention (``db_eval_iou``): two empty masks agree, so their IoU is 1. This is
    the score SAM2 fine-tuning reports; the SAM3 metrics use
    :func:`sam_hf.metrics.matching.pairwise_mask_iou`.
    Returns float64 (float32 on MPS) on the inputs' device.
    """
    inter, area_p, area_g = _overlap_counts(pred, gt)
    union = area_p + area_g - inter
    out = inter.to(result_dtype(inter.device)) / union.clamp(min=1)
    return torch.where(union == 0, torch.ones_like(out), out)


def dice(pred: Any, gt: Any) -> torch.Tensor:
    """Per-instance Dice 2|P & G| / (|P| + |G|) of (N, H, W) stacks -> (N,) float.

    Same empty rule as :func:`mask_iou`: both empty gives 1.
    """
    inter, area_p, area_g = _overlap_counts(pred, gt)
    total = area_p + area_g
    out = (2 * inter).to(result_dtype(inter.device)) / total.clamp(min=1)
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
        padded = zeros(x, (*x.shape[:-1], left + width + right))
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
            nxt = copy_of(table[-1])
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
    for part in chunks(n, h * w):
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
    :data:`CACHE_BUDGET` elements.
    """
    order = sorted(range(len(areas)), key=lambda i: areas[i])
    buckets: list[list[int]] = []
    cur: list[int] = []
    cap = mh = mw = 0
    for i in order:
        nh, nw = max(mh, heights[i]), max(mw, widths[i])
        if cur and (nh * nw > cap or (len(cur) + 1) * nh * nw > CACHE_BUDGET):
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
    match_p, match_g = int_zeros(bp, n), int_zeros(bp, n)
    rows_any = bp.any(2) | bg.any(2)
    cols_any = bp.any(1) | bg.any(1)
    idx = nonzero_indices(rows_any.any(1))
    if not idx:
        return match_p, match_g
    y0, y1 = first_last(rows_any)
    x0, x1 = first_last(cols_any)
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
        match_p[inst] = count_true(crop_p & _dilate(crop_g, runs, xp))
        match_g[inst] = count_true(crop_g & _dilate(crop_p, runs, xp))
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
    p, g = pred_and_gt(pred, gt)
    return _boundary_f1_arrays(p, g, bound_th, array_module(p), device_of(p))


def _boundary_f1_arrays(
    pa: Any, ga: Any, bound_th: float, xp: Any, device: torch.device
) -> torch.Tensor:
    """:func:`boundary_f1` on bool arrays of module ``xp`` (numpy or torch)."""
    n, h, w = pa.shape
    dtype = result_dtype(device)
    radius = boundary_tolerance(bound_th, h, w)
    if n == 0 or h == 0 or w == 0:  # no pixels, so no boundary on either side
        return torch.ones(n, dtype=dtype, device=device)
    bp, bg = _boundary_map(pa, xp), _boundary_map(ga, xp)
    counts = (
        count_true(bp),
        count_true(bg),
        *_boundary_matches(bp, bg, _footprint_runs(radius, h, w), xp),
    )
    n_p, n_g, match_p, match_g = (to_tensor(c, device) for c in counts)
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
    p, g = pred_and_gt(pred, gt)
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
