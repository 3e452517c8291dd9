"""Concept detection metrics of SAM3: SA-Co's cgF1 / pmF1 / IL_MCC, recall, grounding.

The questions SAM3 is scored on, per (image, noun phrase) *pair*: does it say whether the
concept is present (grounding accuracy, IL_MCC), does it find every instance (concept
recall, pmF1), does an attribute phrase pick the right instances (attribute accuracy).
All keep the predictions scoring >= 0.5 and use the pycocotools IoU convention
(:mod:`sam_hf.metrics.matching`); ``METRICS.md`` holds the contract. A pair::

    {"gt": bool (G, H, W), "pred": bool (P, H, W), "scores": float (P,), "phrase": str,
     # optional:
     "gt_iscrowd": bool (G,),            # crowd ground truth is dropped, as SA-Co does
     "candidates": bool (C, H, W),       # attribute_accuracy only, see there
     "candidate_labels": bool (C,)}

G, P and C may be 0; masks of any dtype are cast to bool (non-zero = foreground); numpy
arrays are accepted wherever tensors are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sam_hf.metrics.arrays import as_masks, as_vector
from sam_hf.metrics.matching import kept_pair, matched_ious, max_matching, pairwise_mask_iou

__all__ = [
    "SACO_IOU_THRESHOLDS",
    "attribute_accuracy",
    "concept_recall",
    "grounding_accuracy",
    "kept_match_rate",
    "saco_metrics",
]

#: SA-Co / COCO IoU thresholds. ``linspace``, not ``arange``: 0.6 must be exactly 0.6.
SACO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def saco_metrics(pairs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """SA-Co detection metrics of SAM3 (``CGF1Eval``), on a 0-1 scale.

    Per pair, predictions with score >= 0.5 are kept and matched once to the (non-crowd)
    ground truth by a Hungarian assignment maximising pycocotools mask IoU
    (:func:`sam_hf.metrics.matching.matched_ious`); at each threshold t of
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
        gt, pred = kept_pair(pair)
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
        matched = matched_ious(pred, gt)  # 0 for an unmatched instance: never a TP
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
        gt, pred = kept_pair(pair)
        if gt.shape[0] == 0:
            continue
        rows, _ = max_matching(pairwise_mask_iou(pred, gt))
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
        gt, pred = kept_pair(pair)
        right += (gt.shape[0] > 0) == (pred.shape[0] > 0)
    return right / len(pairs)


def kept_match_rate(pairs: Sequence[Mapping[str, Any]]) -> tuple[float | None, int]:
    """Score calibration: share of kept predictions (score >= 0.5) that match a target.

    Per pair, the kept predictions are matched one to one to the (non-crowd) ground truth
    with IoU >= 0.5 (the matching of :func:`concept_recall`); the result is matched / kept
    summed over ALL pairs, so every kept prediction on a negative phrase counts as
    unmatched. Returns (rate, number kept); the rate is None when nothing is kept (undefined,
    like :func:`attribute_accuracy` without candidates: left out of the results, not NaN).
    """
    matched = kept = 0
    for pair in pairs:
        gt, pred = kept_pair(pair)
        kept += pred.shape[0]
        if gt.shape[0] and pred.shape[0]:
            matched += len(max_matching(pairwise_mask_iou(pred, gt))[0])
    return (matched / kept if kept else None), kept


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
        cand = as_masks(pair["candidates"], "candidates", empty_ok=True)
        labels = as_vector(pair["candidate_labels"]).astype(bool)
        if labels.shape[0] != cand.shape[0]:
            raise ValueError(f"{cand.shape[0]} candidates but {labels.shape[0]} candidate_labels")
        _, pred = kept_pair(pair)
        included = np.zeros(cand.shape[0], dtype=bool)
        _, cols = max_matching(pairwise_mask_iou(pred, cand))
        included[cols] = True
        correct += int((included == labels).sum())
        total += cand.shape[0]
    return correct / total if total else None
