"""The trainer's evaluation numbers: per-image records gathered across ranks, then the metrics.

Evaluation runs sharded over ranks; each rank turns its predictions into small, picklable
records (``*_records``) that ``gather_for_metrics`` collects, and the main process computes the
numbers from all of them (``*_metrics``), so a metric that is not a plain mean (AP, cgF1, a
Hungarian matching) is computed once over the whole split, never averaged over ranks.

* SAM2: per image, each object's IoU, Dice and Boundary F1 at the original resolution
  (:mod:`~sam_hf.metrics.masks`); the metrics are means over every object, not over images.
* SAM3: per image, every (image, phrase) pair with its masks as RLE; the metrics are SA-Co's
  (:mod:`~sam_hf.metrics.concepts`), COCO mask AP (:mod:`~sam_hf.metrics.coco`) and the
  matched instance IoU (:func:`~sam_hf.metrics.matching.mean_matched_iou`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sam_hf.data import rle
from sam_hf.metrics.coco import coco_mask_ap
from sam_hf.metrics.concepts import (
    attribute_accuracy,
    concept_recall,
    grounding_accuracy,
    kept_match_rate,
    saco_metrics,
)
from sam_hf.metrics.masks import boundary_f1, dice, mask_iou
from sam_hf.metrics.matching import mean_matched_iou, remap_scores

#: The COCO summary numbers SAM3's evaluation reports.
COCO_KEYS = ("mask_AP", "mask_AP50", "mask_AP75", "mask_AR")


def sam2_records(predictions: Sequence[dict]) -> list[dict]:
    """Per image: per-object IoU, Dice and Boundary F1 at the original resolution."""
    out = []
    for p in predictions:
        pred, gt = p["pred_masks"].bool().cpu(), p["gt_masks"].bool().cpu()
        out.append(
            {
                "image_id": p["image_id"],
                "iou": mask_iou(pred, gt).tolist(),
                "dice": dice(pred, gt).tolist(),
                "boundary_f1": boundary_f1(pred, gt).tolist(),
            }
        )
    return out


def sam2_metrics(records: Sequence[dict]) -> dict[str, float]:
    """Means over every evaluated object (not over images), plus the object count."""
    iou = np.array([v for r in records for v in r["iou"]], dtype=np.float64)
    if iou.size == 0:
        return {"mean_iou": 0.0, "mean_dice": 0.0, "mean_boundary_f1": 0.0, "num_objects": 0}
    dsc = np.array([v for r in records for v in r["dice"]], dtype=np.float64)
    bf1 = np.array([v for r in records for v in r["boundary_f1"]], dtype=np.float64)
    return {
        "mean_iou": float(iou.mean()),
        "mean_dice": float(dsc.mean()),
        "mean_boundary_f1": float(bf1.mean()),
        "iou_at_50": float((iou >= 0.5).mean()),
        "num_objects": int(iou.size),
        "num_images": len(records),
    }


def _rles(masks: torch.Tensor) -> list[dict]:
    return [rle.encode(m) for m in masks.bool().cpu().numpy()]


def _unrles(rles: list[dict], size: tuple[int, int]) -> torch.Tensor:
    return torch.from_numpy(rle.decode_many(rles, *size))


def _pair_record(pair: dict, score_threshold: float) -> dict:
    size = tuple(pair["gt"].shape[1:]) if pair["gt"].ndim == 3 else tuple(pair["pred"].shape[1:])
    rec = {
        "phrase": pair["phrase"],
        "size": size,
        "gt": _rles(pair["gt"]),
        "pred": _rles(pair["pred"]),
        # the metrics keep scores >= 0.5: move score_threshold there (rank-safe)
        "scores": remap_scores(pair["scores"].float(), score_threshold).cpu().tolist(),
    }
    if pair.get("candidates") is not None:
        rec["candidates"] = _rles(pair["candidates"])
        rec["candidate_labels"] = pair["candidate_labels"].bool().cpu().tolist()
    return rec


def sam3_records(predictions: Sequence[dict], score_threshold: float) -> list[dict]:
    """Per image, every (image, phrase) pair with masks as RLE (small to gather) and scores
    remapped so that ``score_threshold`` becomes the metrics' 0.5 (:func:`remap_scores`)."""
    return [
        {
            "image_id": p["image_id"],
            "pairs": [_pair_record(pair, score_threshold) for pair in p["pairs"]],
        }
        for p in predictions
    ]


def sam3_pairs(records: Sequence[dict]) -> list[dict[str, Any]]:
    """The (image, phrase) pairs of :func:`sam3_records`, masks decoded again."""
    pairs = []
    for r in records:
        for rec in r["pairs"]:
            pair = {
                "phrase": rec["phrase"],
                "gt": _unrles(rec["gt"], rec["size"]),
                "pred": _unrles(rec["pred"], rec["size"]),
                "scores": torch.tensor(rec["scores"], dtype=torch.float32),
            }
            if "candidates" in rec:
                pair["candidates"] = _unrles(rec["candidates"], rec["size"])
                pair["candidate_labels"] = torch.tensor(rec["candidate_labels"], dtype=torch.bool)
            pairs.append(pair)
    return pairs


def sam3_metrics(records: Sequence[dict]) -> dict[str, float]:
    """SA-Co's cgF1 family, concept recall, grounding and attribute accuracy, COCO mask AP and
    the matched instance IoU over every pair of :func:`sam3_records` ({} when there is none)."""
    pairs = sam3_pairs(records)
    if not pairs:
        return {}
    metrics = dict(saco_metrics(pairs))
    metrics["concept_recall"] = concept_recall(pairs)
    metrics["grounding_accuracy"] = grounding_accuracy(pairs)
    rate, metrics["num_kept"] = kept_match_rate(pairs)
    if rate is not None:
        metrics["kept_match_rate"] = rate
    attr = attribute_accuracy(pairs)
    if attr is not None:
        metrics["attribute_accuracy"] = attr
    ap = coco_mask_ap([{**p, "category": p["phrase"]} for p in pairs])
    metrics.update({k: v for k, v in ap.items() if k in COCO_KEYS})
    metrics["mean_iou"] = mean_matched_iou(pairs)
    metrics["num_pairs"] = len(pairs)
    metrics["num_images"] = len(records)
    return {k: float(v) if isinstance(v, float) else v for k, v in metrics.items()}
