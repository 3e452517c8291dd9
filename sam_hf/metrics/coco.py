"""COCO mask AP / AR of SAM3's predictions, through pycocotools' own ``COCOeval``.

A ranking metric next to the thresholded SA-Co ones of :mod:`sam_hf.metrics.concepts`: the
predictions of each (image, category) are sorted by score and matched to the ground truth
at IoU .50:.95, so a model is judged on its whole precision/recall curve. The masks are
RLE-encoded in memory and handed to the reference implementation, so the numbers are the
official ones; only ``maxDets`` is raised above 100 (MinneApple images hold 120+ apples).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam_hf.data import rle as rle_utils
from sam_hf.metrics.arrays import as_masks, as_vector

__all__ = ["coco_mask_ap"]


def _numpy_masks(x: Any, name: str) -> np.ndarray:
    masks = as_masks(x, name, empty_ok=True)
    return masks if isinstance(masks, np.ndarray) else masks.cpu().numpy()


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


def _checked_entry(index: int, entry: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """(gt, pred, scores, crowd flags) of one entry as numpy, with consistent sizes."""
    gt = _numpy_masks(entry["gt"], "gt")
    pred = _numpy_masks(entry["pred"], "pred")
    scores = as_vector(entry["scores"]).astype(np.float64)
    if scores.shape[0] != pred.shape[0]:
        raise ValueError(f"image {index}: {pred.shape[0]} masks but {scores.shape[0]} scores")
    if gt.shape[0] and pred.shape[0] and gt.shape[1:] != pred.shape[1:]:
        raise ValueError(
            f"image {index}: gt masks {gt.shape[1:]} and predicted masks "
            f"{pred.shape[1:]} differ in size"
        )
    crowd = entry.get("gt_iscrowd")
    crowd = np.zeros(gt.shape[0], dtype=bool) if crowd is None else as_vector(crowd).astype(bool)
    if crowd.shape[0] != gt.shape[0]:
        raise ValueError(f"image {index}: {gt.shape[0]} masks but {crowd.shape[0]} gt_iscrowd")
    return gt, pred, scores, crowd


def _add_annotations(
    anns: list[dict], masks: np.ndarray, image_id: int, category: int, extra: dict[str, Any]
) -> None:
    """Append one COCO annotation per mask; ``extra`` maps a key to per-mask values."""
    rles = rle_utils.encode_many(masks)
    areas, boxes = rle_utils.area(rles), rle_utils.to_bbox(rles)
    for k, rle in enumerate(rles):
        anns.append(
            {
                "id": len(anns) + 1,  # COCOeval stores ids as match flags: never 0
                "image_id": image_id,
                "category_id": category,
                "segmentation": rle,
                "area": float(areas[k]),
                "bbox": boxes[k].tolist(),
                **{key: values[k] for key, values in extra.items()},
            }
        )


def _summary(ev: COCOeval) -> dict[str, float]:
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
        gt, pred, scores, crowd = _checked_entry(image_id - 1, entry)
        height, width = (gt if gt.shape[0] or not pred.shape[0] else pred).shape[1:]
        name = str(entry.get("category", entry.get("phrase", "object")))
        cat = cat_ids.setdefault(name, len(cat_ids) + 1)
        img_infos.append({"id": image_id, "height": int(height), "width": int(width)})
        most = max(most, gt.shape[0], pred.shape[0])
        _add_annotations(gt_anns, gt, image_id, cat, {"iscrowd": [int(c) for c in crowd]})
        dt_extra = {"iscrowd": [0] * len(scores), "score": [float(s) for s in scores]}
        _add_annotations(dt_anns, pred, image_id, cat, dt_extra)
    categories = [{"id": i, "name": n} for n, i in cat_ids.items()]
    ev = COCOeval(
        _coco(img_infos, categories, gt_anns), _coco(img_infos, categories, dt_anns), "segm"
    )
    ev.params.maxDets = [1, 10, max(100, most)]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return _summary(ev)
