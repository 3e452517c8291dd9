"""The best mean IoU any SAM2 can reach on a dataset at a given input resolution.

    python scripts/mask_ceiling.py --data data/synthetic_orchard_demo --resolution 256

Why: SAM2's mask decoder predicts logits on a grid 4x finer than its stride-16 image
embedding, i.e. ``resolution / 4`` cells a side (64 x 64 at 256 px), and evaluation upsamples
them bilinearly to the image and thresholds at 0 (``sam_hf.eval.sam2.upsample_masks``). Objects
a few cells wide cannot be drawn exactly on that grid, whatever the weights. This script fits,
for every ground-truth object, the low-resolution logits that reproduce its mask best through
that same upsampling (Adam on BCE + Dice, then IoU of the thresholded result), and prints the
mean IoU per object-size bin. A goal above the "fitted" line is out of reach at that resolution
for any model; the "area" line is the plain area-average of the mask on the grid, for scale.

    python scripts/mask_ceiling.py --data DATA --resolution 256 --records OUT/records/sam2.json

adds a column with a model's own per-object IoU from a ``scripts/evaluate.py sam2`` record
(same data and split), so where a model falls short of the ceiling shows per object size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from sam_hf.data import rle
from sam_hf.eval.sam2 import upsample_masks
from sam_hf.metrics.masks import mask_iou

#: Object-area bins (pixels in the original image) of the printed table.
BINS = ((0, 50), (50, 150), (150, 400), (400, float("inf")))


def _fit_logits(gt: torch.Tensor, area: torch.Tensor, steps: int) -> torch.Tensor:
    """Low-res logits (n, 1, h, w) whose bilinear upsampling best matches ``gt`` (n, H, W),
    started from the masks' area averages ``area`` (n, 1, h, w) on that grid."""
    target = gt.float()[:, None]
    logits = torch.logit(area.clamp(0.02, 0.98)).mul(0.5).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.2)
    for _ in range(steps):
        up = F.interpolate(logits, size=gt.shape[-2:], mode="bilinear", align_corners=False)
        prob = up.sigmoid()
        inter = (prob * target).sum((1, 2, 3))
        dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(up, target) + dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logits.detach()


def ceilings(rows: datasets.Dataset, resolution: int, steps: int) -> dict[str, np.ndarray]:
    """Per-object area, area-average IoU and fitted IoU over every object of ``rows``."""
    grid = resolution // 4
    out: dict[str, list[float]] = {"area": [], "area_iou": [], "fitted_iou": []}
    for row in rows:
        objs = row["objects"]
        if not objs:
            continue
        gt = torch.from_numpy(
            rle.decode_many([o["segmentation"] for o in objs], row["height"], row["width"])
        ).bool()
        size = tuple(gt.shape[-2:])
        avg = F.interpolate(gt.float()[:, None], size=(grid, grid), mode="area")
        out["area"] += gt.flatten(1).sum(1).tolist()
        out["area_iou"] += mask_iou(upsample_masks(avg - 0.5, size), gt).tolist()
        fitted = _fit_logits(gt, avg, steps)
        out["fitted_iou"] += mask_iou(upsample_masks(fitted, size), gt).tolist()
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def record_ious(path: str, rows: datasets.Dataset, prompt: str) -> np.ndarray:
    """Per-object IoU of an ``evaluate.py`` record, in the order :func:`ceilings` visits objects."""
    records = json.loads(Path(path).read_text())["records"]
    if prompt not in records:
        raise SystemExit(f"{path} has no {prompt!r} records; it has {sorted(records)} (--prompt)")
    by_image = {r["image_id"]: r["iou"] for r in records[prompt]}
    out: list[float] = []
    for row in rows:
        if not row["objects"]:
            continue
        ious = by_image.get(row["image_id"])
        if ious is None or len(ious) != len(row["objects"]):
            raise SystemExit(
                f"{path} does not cover image {row['image_id']} object for object: evaluate the "
                "same --data and --split with every image (--max-images 0)."
            )
        out += ious
    return np.asarray(out, dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="Prepared DatasetDict folder.")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--resolution", type=int, default=256, help="Model input size (px).")
    ap.add_argument("--steps", type=int, default=300, help="Adam steps of the logit fit.")
    ap.add_argument("--records", default=None, help="An evaluate.py sam2 records/<label>.json.")
    ap.add_argument("--prompt", default="point", help="Which protocol of --records (point...).")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = datasets.load_from_disk(args.data)[args.split]
    model = record_ious(args.records, rows, args.prompt) if args.records else None
    c = ceilings(rows, args.resolution, args.steps)
    grid = args.resolution // 4
    print(f"{args.data} [{args.split}], {len(c['area'])} objects, resolution {args.resolution}")
    print(f"mask grid {grid}x{grid}; mean IoU reachable through bilinear upsampling:")
    print(
        "object area (px) | objects | area-average | fitted" + (" | model" if args.records else "")
    )
    for lo, hi in (*BINS, (0, float("inf"))):
        sel = (c["area"] >= lo) & (c["area"] < hi)
        name = "all" if (lo, hi) == (0, float("inf")) else f"[{lo:g}, {hi:g})"
        if sel.any():
            extra = f" | {model[sel].mean():.3f}" if model is not None else ""
            print(
                f"{name} | {int(sel.sum())} | {c['area_iou'][sel].mean():.3f} | "
                f"{c['fitted_iou'][sel].mean():.3f}{extra}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
