"""The equal-prompt gap: SAM3 tracker minus SAM2, given the very same clicks and boxes.

The SAM3 tracker is SAM2's prompt encoder and mask decoder on SAM3's ViT, so once both are
given identical prompts (:mod:`sam_hf.eval.sam2` draws them per object in original-image
pixels, whatever each model's input size) the difference of their numbers is the difference
the backbone makes. :func:`equal_prompt_gap` first checks that the two models were scored on
the same images, objects and prompts (else the subtraction would mean nothing), then reports,
per protocol and metric, the gap (tracker minus SAM2, exactly the difference of the two
report numbers) and a paired percentile bootstrap interval over images.

**Bootstrap** (:func:`paired_bootstrap`): the metrics are means over instances, and instances
of one image are not independent (same lighting, same clutter), so the unit resampled is the
image: each of ``resamples`` draws picks ``n`` images with replacement -- the same images for
both models, which is what makes it paired -- and recomputes the pooled instance mean of the
per-instance differences; the interval is the 2.5th and 97.5th percentiles of those gaps.
Seeded (``numpy.random.default_rng(seed)``), so the same seed gives the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # runtime import would be circular (compare.py calls this module)
    from sam_hf.eval.compare import ModelEvaluation

#: Metrics of the gap table: report key -> per-instance record field.
GAP_METRICS = {
    "mean_iou": "iou",
    "mean_dice": "dice",
    "mean_boundary_f1": "boundary_f1",
    "iou_at_50": "iou",
}
#: Confidence level of the percentile interval.
LEVEL = 0.95
#: Resamples drawn per block (bounds memory: a block holds block x images indices).
_BLOCK = 256


class PromptMismatch(ValueError):
    """Two models were not scored on the same images, objects or prompts."""


def paired_bootstrap(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], resamples: int, seed: int
) -> dict[str, float]:
    """Gap ``mean(b) - mean(a)`` over all instances, with its paired bootstrap interval.

    ``a[i]`` and ``b[i]`` are the per-instance values of image ``i`` for the two models (same
    instances, same order). Returns ``gap``, ``ci_low``, ``ci_high`` (the :data:`LEVEL`
    percentile interval of ``resamples`` image resamples) and ``num_images``. Identical
    inputs give exactly 0 and ``[0, 0]``: the per-image differences are summed, never the
    two means subtracted per resample.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"need the same images for both models, got {len(a)} and {len(b)}.")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}.")
    av = [np.asarray(x, dtype=np.float64) for x in a]
    bv = [np.asarray(x, dtype=np.float64) for x in b]
    diff = np.array([(y - x).sum() for x, y in zip(av, bv)])
    count = np.array([x.size for x in av], dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(av)
    gaps = []
    for start in range(0, resamples, _BLOCK):
        idx = rng.integers(0, n, size=(min(_BLOCK, resamples - start), n))
        gaps.append(diff[idx].sum(1) / count[idx].sum(1))
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(np.concatenate(gaps), [tail, 100 - tail])
    # the point estimate as the report computes each model's number (sam2_metrics' means)
    gap = float(np.concatenate(bv).mean()) - float(np.concatenate(av).mean())
    return {"gap": gap, "ci_low": float(low), "ci_high": float(high), "num_images": n}


def _per_image(records: Sequence[dict], field: str, key: str) -> dict[str, np.ndarray]:
    values = {}
    for r in records:
        v = np.asarray(r[field], dtype=np.float64)
        values[r["image_id"]] = (v >= 0.5).astype(np.float64) if key == "iou_at_50" else v
    return values


def check_same_prompts(a: Sequence[dict], b: Sequence[dict], what: str) -> list[str]:
    """The image ids both record lists hold; raises :class:`PromptMismatch` unless they hold
    the same images, with the same objects (phrases) and the same prompts (original pixels)."""
    ra, rb = {r["image_id"]: r for r in a}, {r["image_id"]: r for r in b}
    if set(ra) != set(rb):
        raise PromptMismatch(f"{what}: the two models were scored on different images.")
    for iid, x in ra.items():
        y = rb[iid]
        same = x["phrases"] == y["phrases"] and len(x["iou"]) == len(y["iou"])
        same = same and x.get("prompt_labels") == y.get("prompt_labels")
        if not same or x.get("prompt_points") != y.get("prompt_points"):  # exact, as drawn
            raise PromptMismatch(f"{what}: image {iid} was prompted differently for the two.")
    return list(ra)


def equal_prompt_gap(
    sam2: ModelEvaluation, tracker: ModelEvaluation, resamples: int, seed: int
) -> dict[str, Any]:
    """Per common protocol and :data:`GAP_METRICS` metric: ``tracker - sam2`` with its
    bootstrap interval, both models' numbers, and the bootstrap's settings (for the report)."""
    protocols: dict[str, dict[str, Any]] = {}
    for proto in (p for p in sam2.records if p in tracker.records):
        what = f"{tracker.label} vs {sam2.label}, {proto}"
        ids = check_same_prompts(sam2.records[proto], tracker.records[proto], what)
        if not ids:
            continue
        rows = {}
        for key, field in GAP_METRICS.items():
            va = _per_image(sam2.records[proto], field, key)
            vb = _per_image(tracker.records[proto], field, key)
            row = paired_bootstrap([va[i] for i in ids], [vb[i] for i in ids], resamples, seed)
            row["sam2"] = sam2.metrics[proto].get(key)
            row["sam3_tracker"] = tracker.metrics[proto].get(key)
            rows[key] = row
        protocols[proto] = rows
    return {
        "sam2": sam2.label,
        "sam3_tracker": tracker.label,
        "resamples": int(resamples),
        "seed": int(seed),
        "level": LEVEL,
        "protocols": protocols,
    }


def gap_pairs(models: Sequence[ModelEvaluation]) -> list[tuple[ModelEvaluation, ModelEvaluation]]:
    """(SAM2, SAM3 tracker) pairs to subtract: the baselines with each other, and the evaluated
    (fine-tuned or single) models with each other."""
    pairs = []
    for baseline in (True, False):
        tier = [m for m in models if (m.role == "baseline") == baseline]
        sam2 = [m for m in tier if m.family == "sam2"]
        tracker = [m for m in tier if m.family == "sam3_tracker"]
        if sam2 and tracker:
            pairs.append((sam2[0], tracker[0]))
    return pairs
