"""Speed of our per-instance metrics against the usual references, equal values asserted.

Masks: the instance masks of ``--num-images`` synthetic orchard frames at 720 x 1280
(MinneApple's size) as ground truth, and predictions made from them by a seeded random
shift and dilation/erosion per instance (every mask non-empty: pycocotools scores two empty
masks 0 where DAVIS and we score 1). Metrics are computed per image on its (K, H, W)
stacks, as the SAM2 evaluation does.

- IoU: pycocotools -- ``mask.encode`` of each stack, ``mask.iou`` on the RLEs (per pair) --
  against ``sam_hf.metrics.masks.mask_iou``;
- Dice: numpy -- per-instance ``count_nonzero`` of the intersection and of each mask --
  against ``sam_hf.metrics.masks.dice``;
- Boundary F1: the DAVIS 2017 ``f_measure`` recipe, written here with numpy and OpenCV
  (``seg2bmap`` boundaries, ``cv2.dilate`` with skimage's ``disk``, per instance) -- against
  ``sam_hf.metrics.masks.boundary_f1``.

Before timing, each reference's values are asserted equal to ours (exactly, element by
element). Each metric's arms run interleaved (order alternating) over ``--rounds`` rounds;
its ratio is the median paired (reference time / our time) under process CPU time (all arms
are single-threaded computation in this process). The RATIO line is the MINIMUM of the
three ratios -- ours is at least that many times faster on every metric; the geometric mean
is printed too.

    python benchmarks/metrics_speed.py [--num-images 3] [--rounds 5]

Goal: >= 1.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import _common as C
import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from skimage.morphology import disk

GOAL = 1.0
BOUND_TH = 0.008  # DAVIS' default boundary tolerance (fraction of the diagonal)


# ------------------------------------------------------------------------------ masks


def make_masks(num_images: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(pred, gt)] bool (K, 1280, 720) stacks per synthetic frame; predictions perturbed."""
    from sam_hf.data.synthetic.orchard import render_orchard_image

    rng = np.random.default_rng(seed)
    out = []
    for index in range(num_images):
        label = render_orchard_image(seed, index, (1280, 720)).label_map
        ids = np.arange(1, int(label.max()) + 1)
        gt = label[None] == ids[:, None, None]
        pred = np.empty_like(gt)
        for k, m in enumerate(gt):
            pred[k] = _perturb(m, rng)
        out.append((pred, gt))
    return out


def _perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An imperfect prediction: shifted by up to 10 px, grown or shrunk by up to 5 px."""
    dy, dx = (int(v) for v in rng.integers(-10, 11, size=2))
    m = np.roll(mask, (dy, dx), axis=(0, 1)).astype(np.uint8)
    r = int(rng.integers(0, 6))
    if r:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        m = cv2.dilate(m, kernel) if rng.random() < 0.5 else cv2.erode(m, kernel)
    return m.astype(bool) if m.any() else mask.copy()


# -------------------------------------------------------------------------- references


def ref_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """pycocotools: RLE-encode every mask, IoU of each (prediction, ground truth) pair.

    Encoding mask by mask was the fastest pycocotools usage measured here (encoding a whole
    (H, W, K) stack at once, or ``mask.iou`` on all pairs and taking the diagonal, were
    10-15% slower).
    """
    p = [mask_utils.encode(np.asfortranarray(m.view(np.uint8))) for m in pred]
    g = [mask_utils.encode(np.asfortranarray(m.view(np.uint8))) for m in gt]
    return np.array([mask_utils.iou([a], [b], [0])[0, 0] for a, b in zip(p, g)])


def ref_dice(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """numpy: 2|P & G| / (|P| + |G|) per instance, 1 when both are empty."""
    inter = np.count_nonzero(pred & gt, axis=(1, 2))
    total = np.count_nonzero(pred, axis=(1, 2)) + np.count_nonzero(gt, axis=(1, 2))
    return np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))


def rowwise_dice(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """numpy variant: ``count_nonzero`` over each whole flattened mask (SIMD), not ``axis=``.

    Not the reference: printed for information, as the fastest plain-numpy Dice known here.
    """

    def counts(x: np.ndarray) -> np.ndarray:
        return np.array([np.count_nonzero(r) for r in x.reshape(x.shape[0], -1)], np.int64)

    inter = counts(pred & gt)
    total = counts(pred) + counts(gt)
    return np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))


def seg_to_boundary(seg: np.ndarray) -> np.ndarray:
    """DAVIS ``seg2bmap`` (same-size case): pixels that differ from the E, S or SE neighbour."""
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[-1, :] = seg[-1, :] ^ east[-1, :]
    b[:, -1] = seg[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def davis_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """DAVIS 2017 boundary F of one (H, W) mask pair (numpy + OpenCV + skimage ``disk``)."""
    radius = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))
    footprint = disk(radius).astype(np.uint8)
    bp, bg = seg_to_boundary(pred), seg_to_boundary(gt)
    dil_p = cv2.dilate(bp.astype(np.uint8), footprint) > 0
    dil_g = cv2.dilate(bg.astype(np.uint8), footprint) > 0
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        precision = recall = 1.0
    elif n_p == 0:
        precision, recall = 1.0, 0.0
    elif n_g == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = int((bp & dil_g).sum()) / n_p
        recall = int((bg & dil_p).sum()) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def ref_boundary_f1(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.array([davis_f_measure(p, g) for p, g in zip(pred, gt)])


# ------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=3, help="synthetic 720x1280 frames")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after 1 warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    C.add_common_args(parser)
    args = parser.parse_args()
    C.set_threads(args.threads)
    C.quiet_libraries()

    from sam_hf.metrics.masks import boundary_f1, dice, mask_iou

    images = make_masks(args.num_images, args.seed)
    tensors = [(torch.from_numpy(p), torch.from_numpy(g)) for p, g in images]
    n = sum(g.shape[0] for _, g in images)
    h, w = images[0][1].shape[1:]
    print(
        f"masks: {n} instances on {len(images)} synthetic orchard frames of {h}x{w} px "
        f"(H x W), predictions = seeded shift/dilate/erode of each, all non-empty; metrics "
        f"per frame on (K, H, W) stacks; boundary tolerance {BOUND_TH} of the diagonal"
    )
    print(f"{args.rounds} timed rounds (+1 warm-up) per metric, arms interleaved")
    C.print_machine()

    metrics = [
        ("iou", "pycocotools mask.encode + mask.iou", ref_iou, mask_iou),
        ("dice", "numpy count_nonzero(axis=)", ref_dice, dice),
        ("boundary_f1", "DAVIS f_measure (numpy + cv2.dilate)", ref_boundary_f1, boundary_f1),
    ]
    extra = {"dice": ("numpy row-wise count_nonzero", rowwise_dice)}
    ratios: dict[str, float] = {}
    for name, ref_name, ref_fn, our_fn in metrics:
        ours_vals = np.concatenate([our_fn(p, g).numpy() for p, g in tensors])
        ref_vals = np.concatenate([ref_fn(p, g) for p, g in images])
        if not np.array_equal(ours_vals, ref_vals):
            worst = float(np.abs(ours_vals - ref_vals).max())
            raise AssertionError(f"{name}: values differ from {ref_name} (max |diff| {worst})")
        print(
            f"{name}: values equal to {ref_name} on all {n} instances (mean {ours_vals.mean():.4f})"
        )

        def reference(fn: Any = ref_fn) -> None:
            for p, g in images:
                fn(p, g)

        def ours(fn: Any = our_fn) -> None:
            for p, g in tensors:
                fn(p, g)

        arms = [("reference", reference), ("ours", ours)]
        if name in extra:
            info_name, info_fn = extra[name]
            if not np.array_equal(np.concatenate([info_fn(p, g) for p, g in images]), ours_vals):
                raise AssertionError(f"{name}: {info_name} disagrees")
            arms.append(("variant", lambda fn=info_fn: [fn(p, g) for p, g in images]))
        times = C.interleave(arms, args.rounds, 1)
        ratios[name] = C.compare(
            f"{name} reference", times["reference"], f"{name} ours", times["ours"]
        )["cpu"]
        print(f"{name}: reference/ours = {ratios[name]:.3f} (cpu clock)")
        if "variant" in times:
            v = C.median(C.paired_ratios(times["variant"].cpu, times["ours"].cpu))
            print(
                f"{name} (information, not in the RATIO): {extra[name][0]} (values equal) "
                f"{C.describe(times['variant'].cpu, 'ms', 1e3)} [cpu]; variant/ours = {v:.3f}"
            )

    geo = math.exp(sum(math.log(v) for v in ratios.values()) / len(ratios))
    worst = min(ratios.values())
    print(
        "per metric: "
        + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
        + f"; geometric mean {geo:.3f}; minimum {worst:.3f}"
    )
    print(f"goal: >= {GOAL} (RATIO = the minimum over the three metrics)")
    C.print_ratio("metrics_speed", worst)


if __name__ == "__main__":
    main()
