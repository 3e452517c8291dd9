"""Metric conventions of METRICS.md: hand-computed cases, edge cases, independent references.

The references below are written the way the official evaluators compute things (DAVIS
``db_eval_iou`` / ``f_measure`` with ``cv2.dilate`` + ``skimage.morphology.disk``; SA-Co's
``CGF1Eval`` loop with pycocotools' mask IoU) and never call into ``sam_hf.metrics``.

Array comparisons with a reference are bitwise: both sides count pixels (exact integers, in
any order) and combine the counts with the same float64 formula, each step a correctly rounded
operation, so there is no second rounding to differ. ``approx`` is used where the test's own
formula is another one (hand-derived values, float64 means taken in another order).
"""

from __future__ import annotations

import contextlib
import io
import math

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment
from skimage.morphology import disk

from sam_hf.metrics import masks as metrics
from sam_hf.metrics.coco import coco_mask_ap
from sam_hf.metrics.concepts import (
    attribute_accuracy,
    concept_recall,
    grounding_accuracy,
    saco_metrics,
)
from sam_hf.metrics.masks import (
    boundary_f1,
    boundary_tolerance,
    dice,
    mask_iou,
    summarize_instance_metrics,
)
from sam_hf.metrics.matching import (
    matched_instance_ious,
    mean_matched_iou,
    pairwise_mask_iou,
)

# --------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------


def ref_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """DAVIS ``seg2bmap``: compare with east, south, south-east neighbours (zero-filled)."""
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def ref_f_measure(fg: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS 2017 ``f_measure`` for one mask pair (no void pixels)."""
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(fg.shape))
    fg_b, gt_b = ref_seg2bmap(fg), ref_seg2bmap(gt)
    footprint = disk(bound_pix).astype(np.uint8)
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), footprint)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), footprint)
    n_fg, n_gt = np.sum(fg_b), np.sum(gt_b)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_b * gt_dil) / float(n_fg)
        recall = np.sum(gt_b * fg_dil) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def ref_db_eval_iou(gt: np.ndarray, seg: np.ndarray) -> np.ndarray:
    inter = np.sum(seg & gt, axis=(-2, -1))
    union = np.sum(seg | gt, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union
    j[np.isclose(union, 0)] = 1
    return j


def ref_coco_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros((len(pred), len(gt)))
    enc = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in (*pred, *gt)]
    return mask_utils.iou(enc[: len(pred)], enc[len(pred) :], [0] * len(gt))


def ref_saco(pairs: list[dict]) -> dict[str, float]:
    """Loop version of SAM3's CGF1Eval (evaluateImg + accumulate) on raw masks."""
    thresholds = np.linspace(0.5, 0.95, 10)
    tps, fps, fns = np.zeros(10), np.zeros(10), np.zeros(10)
    il = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for pair in pairs:
        gt = np.asarray(pair["gt"], dtype=bool)
        if "gt_iscrowd" in pair:
            gt = gt[~np.asarray(pair["gt_iscrowd"], dtype=bool)]
        pred = np.asarray(pair["pred"], dtype=bool)
        pred = pred[np.asarray(pair["scores"]) >= 0.5]
        if len(gt) == 0 and len(pred) == 0:
            il["tn"] += 1
            continue
        if len(gt) > 0 and len(pred) == 0:
            il["fn"] += 1
            fns += len(gt)
            continue
        if len(gt) == 0:
            il["fp"] += 1
            continue
        il["tp"] += 1
        ious = ref_coco_iou(pred, gt)
        rows, cols = linear_sum_assignment(-ious)
        for t_i, t in enumerate(thresholds):
            tp = int((ious[rows, cols] >= t).sum())
            tps[t_i] += tp
            fps[t_i] += len(pred) - tp
            fns[t_i] += len(gt) - tp
    precision = tps / (tps + fps + 1e-4)
    recall = tps / (tps + fns + 1e-4)
    f1 = 2 * precision * recall / (precision + recall + 1e-4)
    tp, fp, tn, fn = il["tp"], il["fp"], il["tn"], il["fn"]
    mcc = float(tp * tn - fp * fn) / (
        (float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn)) ** 0.5 + 1e-6
    )
    return {
        "cgF1": float(np.mean(f1 * mcc)),
        "pmF1": float(np.mean(f1)),
        "IL_MCC": mcc,
        "cgF1_50": float(f1[0] * mcc),
        "cgF1_75": float(f1[5] * mcc),
    }


def ref_coco_ap(images: list[dict], max_dets: list[int]) -> float:
    """Plain pycocotools: COCO json in memory, loadRes, COCOeval; AP at the last maxDets."""
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    dts = []
    for image_id, entry in enumerate(images, start=1):
        h, w = entry["gt"].shape[1:]
        gt["images"].append({"id": image_id, "height": h, "width": w})
        for m in entry["gt"]:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        for m, s in zip(entry["pred"], entry["scores"]):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            dts.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dts), "segm")
        ev.params.maxDets = max_dets
        ev.evaluate()
        ev.accumulate()
    s = ev.eval["precision"][:, :, :, 0, -1]
    return float(np.mean(s[s > -1])) if (s > -1).any() else -1.0


# --------------------------------------------------------------------------------------
# Mask generators
# --------------------------------------------------------------------------------------


def discs(rng: np.random.Generator, n: int, h: int, w: int, rmax: int = 12) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    out = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, rmax)
            out[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


def row_masks(*intervals: tuple[int, int], width: int = 20) -> torch.Tensor:
    """Masks on a 1 x width image, each covering [a, b] inclusive (readable IoUs)."""
    out = torch.zeros(len(intervals), 1, width, dtype=torch.bool)
    for i, (a, b) in enumerate(intervals):
        out[i, 0, a : b + 1] = True
    return out


def pair(gt, pred, scores, phrase="apple", **extra) -> dict:
    return {"gt": gt, "pred": pred, "scores": torch.as_tensor(scores), "phrase": phrase, **extra}


def empty(width: int = 20) -> torch.Tensor:
    return torch.zeros(0, 1, width, dtype=torch.bool)


# --------------------------------------------------------------------------------------
# IoU and Dice (DAVIS convention)
# --------------------------------------------------------------------------------------


def test_iou_and_dice_hand_computed() -> None:
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :2, :3] = True  # 6 px
    pred = torch.zeros(1, 4, 4, dtype=torch.bool)
    pred[0, :2, :2] = True  # 4 px inside
    assert mask_iou(pred, gt).tolist() == [4 / 6]
    assert dice(pred, gt).tolist() == [8 / 10]
    assert mask_iou(pred, gt).dtype == torch.float64


def test_iou_and_dice_empty_cases_and_label_values() -> None:
    full = torch.ones(1, 3, 3, dtype=torch.bool)
    none = torch.zeros(1, 3, 3, dtype=torch.bool)
    pred = torch.cat([none, full, none])
    gt = torch.cat([none, none, full])
    assert mask_iou(pred, gt).tolist() == [1.0, 0.0, 0.0]  # both empty -> 1
    assert dice(pred, gt).tolist() == [1.0, 0.0, 0.0]
    labels = torch.tensor([[[0, 255], [2, 0]]], dtype=torch.uint8)  # 0/255 and 0/2 masks
    assert mask_iou(labels, labels.bool()).tolist() == [1.0]
    assert mask_iou(np.array([[[0.0, 0.3]]]), np.array([[[0, 1]]])).tolist() == [1.0]


def test_iou_matches_davis_reference_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    pred = rng.random((16, 23, 31)) < rng.random((16, 1, 1))
    gt = rng.random((16, 23, 31)) < rng.random((16, 1, 1))
    pred[3] = False
    gt[3] = False
    ours = mask_iou(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    np.testing.assert_array_equal(ours, ref_db_eval_iou(gt, pred))


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        dice(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="bound_th"):
        boundary_f1(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), bound_th=-1)


# --------------------------------------------------------------------------------------
# Boundary F1 (DAVIS f_measure)
# --------------------------------------------------------------------------------------


def test_tolerance_formula() -> None:
    assert boundary_tolerance(0.008, 720, 1280) == 12  # ceil(0.008 * 1468.6) = ceil(11.75)
    assert boundary_tolerance(0.008, 1280, 720) == 12
    assert boundary_tolerance(0.008, 256, 256) == 3  # ceil(2.896)
    assert boundary_tolerance(3, 10, 10) == 3  # >= 1: pixels as given
    assert boundary_tolerance(2.5, 10, 10) == 2.5  # ... even when not an integer
    assert boundary_tolerance(0, 10, 10) == 0


def test_boundary_map_hand_computed() -> None:
    seg = np.zeros((1, 3, 3), dtype=bool)
    seg[0, 1, 1] = True
    expected = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(metrics._boundary_map(seg, np)[0], expected)
    np.testing.assert_array_equal(ref_seg2bmap(seg[0]), expected)
    # a mask filling the image has no boundary at all (DAVIS compares inside the image only)
    assert not metrics._boundary_map(np.ones((1, 4, 5), dtype=bool), np).any()


def test_boundary_f1_hand_computed() -> None:
    # gt: left half (cols 0-4) of a 10x10 image -> boundary = column 4, 10 px
    gt = torch.zeros(1, 10, 10, dtype=torch.bool)
    gt[0, :, :5] = True
    # pred: cols 0-6 -> boundary = column 6: 2 px away from the truth
    shifted = torch.zeros(1, 10, 10, dtype=torch.bool)
    shifted[0, :, :7] = True
    assert boundary_f1(shifted, gt, bound_th=1).tolist() == [0.0]  # radius 1 misses it
    assert boundary_f1(shifted, gt, bound_th=2).tolist() == [1.0]  # radius 2 reaches it
    # pred: top-left quadrant -> boundary = column 4 rows 0-4 + row 4 cols 0-4 (9 px)
    quad = torch.zeros(1, 10, 10, dtype=torch.bool)
    quad[0, :5, :5] = True
    # radius 1 (a cross): P = 6/9 (col 4 and (4, 3)), R = 6/10 (rows 0-5 of col 4)
    p, r = 6 / 9, 6 / 10
    assert boundary_f1(quad, gt, bound_th=1).item() == pytest.approx(2 * p * r / (p + r))
    # radius 0: only exact overlaps, P = 5/9, R = 5/10
    p, r = 5 / 9, 5 / 10
    assert boundary_f1(quad, gt, bound_th=0).item() == pytest.approx(2 * p * r / (p + r))


def test_boundary_f1_empty_cases() -> None:
    blob = torch.zeros(1, 8, 8, dtype=torch.bool)
    blob[0, 2:5, 2:5] = True
    none = torch.zeros(1, 8, 8, dtype=torch.bool)
    full = torch.ones(1, 8, 8, dtype=torch.bool)
    assert boundary_f1(none, none).tolist() == [1.0]  # both empty: P = R = 1
    assert boundary_f1(none, blob).tolist() == [0.0]  # prediction empty: P = 1, R = 0
    assert boundary_f1(blob, none).tolist() == [0.0]  # truth empty: P = 0, R = 1
    assert boundary_f1(full, none).tolist() == [1.0]  # a full mask has no boundary either
    assert boundary_f1(torch.zeros(0, 8, 8), torch.zeros(0, 8, 8)).shape == (0,)


@pytest.mark.parametrize("bound_th", [0.008, 0.05, 0.3, 1, 2, 2.5, 1.5, 3.7, 40])
def test_boundary_f1_matches_davis_reference(bound_th: float) -> None:
    rng = np.random.default_rng(int(bound_th * 1000))
    for h, w in [(37, 53), (64, 48), (1, 19), (17, 1), (9, 9)]:
        pred = discs(rng, 6, h, w)
        gt = discs(rng, 6, h, w)
        gt[0] = pred[0]  # perfect
        gt[1] = np.roll(pred[1], 2, axis=1)  # near miss
        pred[2] = False  # empty prediction
        pred[3] = rng.random((h, w)) < 0.3  # speckle: boundary everywhere
        ours = boundary_f1(torch.from_numpy(pred), torch.from_numpy(gt), bound_th).numpy()
        ref = [ref_f_measure(pred[i], gt[i], bound_th) for i in range(len(pred))]
        np.testing.assert_array_equal(ours, np.array(ref, dtype=np.float64))


def test_boundary_f1_default_tolerance_on_a_hd_frame() -> None:
    # 720x1280 apples-sized objects with the default 0.008 (12 px) tolerance
    rng = np.random.default_rng(7)
    gt = discs(rng, 3, 720, 1280, rmax=40)
    pred = np.roll(gt, (9, -5), axis=(1, 2))
    ours = boundary_f1(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    np.testing.assert_array_equal(ours, [ref_f_measure(pred[i], gt[i]) for i in range(3)])


def test_torch_kernels_equal_numpy_kernels() -> None:
    """The accelerator code path (torch ops), run on the CPU, gives identical counts."""
    rng = np.random.default_rng(3)
    pred = discs(rng, 8, 40, 57)
    gt = np.roll(discs(rng, 8, 40, 57), 1, axis=2)
    pred[0] = rng.random((40, 57)) < 0.2
    for th in (0.008, 2.5, 5):
        via_numpy = boundary_f1(torch.from_numpy(pred), torch.from_numpy(gt), th)
        via_torch = metrics._boundary_f1_arrays(
            torch.from_numpy(pred), torch.from_numpy(gt), th, torch, torch.device("cpu")
        )
        torch.testing.assert_close(via_torch, via_numpy, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_give_identical_values() -> None:
    rng = np.random.default_rng(8)
    pred, gt = discs(rng, 6, 48, 64), np.roll(discs(rng, 6, 48, 64), 2, axis=2)
    cpu_p, cpu_g = torch.from_numpy(pred), torch.from_numpy(gt)
    for fn in (mask_iou, dice, boundary_f1):
        out = fn(cpu_p.cuda(), cpu_g.cuda())
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), fn(cpu_p, cpu_g), rtol=0, atol=0)
    np.testing.assert_array_equal(
        pairwise_mask_iou(cpu_p.cuda(), cpu_g.cuda()), pairwise_mask_iou(cpu_p, cpu_g)
    )


def test_disk_footprint_is_skimage_disk() -> None:
    for r in (0, 1, 2, 12, 2.5, 1.5, 3.7):
        np.testing.assert_array_equal(metrics.disk_footprint(r), disk(r).astype(bool))


def test_summarize_instance_metrics() -> None:
    rng = np.random.default_rng(1)
    pred, gt = torch.from_numpy(discs(rng, 5, 30, 30)), torch.from_numpy(discs(rng, 5, 30, 30))
    out = summarize_instance_metrics(pred, gt)
    assert out["mean_iou"] == pytest.approx(mask_iou(pred, gt).mean().item())
    assert out["mean_dice"] == pytest.approx(dice(pred, gt).mean().item())
    assert out["mean_boundary_f1"] == pytest.approx(boundary_f1(pred, gt).mean().item())
    assert all(math.isnan(v) for v in summarize_instance_metrics(pred[:0], gt[:0]).values())


# --------------------------------------------------------------------------------------
# SA-Co: cgF1, pmF1, IL_MCC
# --------------------------------------------------------------------------------------


def test_pairwise_iou_uses_pycocotools_convention() -> None:
    rng = np.random.default_rng(2)
    pred, gt = discs(rng, 7, 25, 33), discs(rng, 5, 25, 33)
    pred[0] = False
    gt[0] = False  # empty vs empty: 0, not 1
    ours = pairwise_mask_iou(torch.from_numpy(pred), torch.from_numpy(gt))
    np.testing.assert_array_equal(ours, ref_coco_iou(pred, gt))
    assert ours[0, 0] == 0.0
    big = np.zeros((2, 300, 300), dtype=bool)  # covered pixels > half: the unselected path
    big[0, :200] = True
    big[1, 100:] = True
    np.testing.assert_array_equal(pairwise_mask_iou(big, big), ref_coco_iou(big, big))


def expected_saco(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, il: tuple) -> dict:
    precision = tp / (tp + fp + 1e-4)
    recall = tp / (tp + fn + 1e-4)
    f1 = 2 * precision * recall / (precision + recall + 1e-4)
    itp, ifp, itn, ifn = il
    denom = math.sqrt((itp + ifp) * (itp + ifn) * (itn + ifp) * (itn + ifn)) + 1e-6
    mcc = (itp * itn - ifp * ifn) / denom
    return {"pmF1": f1.mean(), "IL_MCC": mcc, "cgF1": (f1 * mcc).mean()}


def test_saco_hand_computed_and_thresholds_are_linspace() -> None:
    gt = row_masks((0, 9))  # 10 px
    pred = row_masks((0, 5))  # 6 px inside: IoU exactly 0.6
    out = saco_metrics([pair(gt, pred, [0.9]), pair(empty(), empty(), [])])
    # TP at t = 0.5, 0.55, 0.6 (np.arange would give 0.6000000000000001 and lose t = 0.6)
    tp = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    exp = expected_saco(tp, 1 - tp, 1 - tp, (1, 0, 1, 0))
    assert out["pmF1"] == pytest.approx(exp["pmF1"], abs=1e-12)
    assert out["IL_MCC"] == pytest.approx(exp["IL_MCC"], abs=1e-12)
    assert out["cgF1"] == pytest.approx(exp["cgF1"], abs=1e-12)
    assert out["cgF1_50"] == pytest.approx(
        exp["IL_MCC"] * 2 * (1 / 1.0001) ** 2 / (2 / 1.0001 + 1e-4)
    )
    assert out["cgF1_75"] == 0.0


def test_saco_edge_cases() -> None:
    gt = row_masks((0, 9))
    perfect = pair(gt, gt.clone(), [0.8])
    true_negative = pair(empty(), empty(), [], phrase="pear")
    false_positive = pair(empty(), row_masks((3, 7)), [0.7], phrase="pear")
    missed = pair(row_masks((0, 4), (10, 14)), empty(), [], phrase="leaf")

    only_tn = saco_metrics([true_negative])  # only an image-level true negative
    assert only_tn == {"cgF1": 0.0, "pmF1": 0.0, "IL_MCC": 0.0, "cgF1_50": 0.0, "cgF1_75": 0.0}

    base = saco_metrics([perfect, true_negative])
    with_fp = saco_metrics([perfect, false_positive])
    assert with_fp["pmF1"] == base["pmF1"]  # FPs on a negative pair do not enter pmF1
    assert base["IL_MCC"] == pytest.approx(1.0, abs=1e-5)
    assert with_fp["IL_MCC"] == 0.0  # tp=1, fp=1, tn=0, fn=0

    with_fn = saco_metrics([perfect, true_negative, missed])
    tp, fn = np.ones(10), np.full(10, 2.0)  # the missed pair adds 2 FNs at every t
    exp = expected_saco(tp, np.zeros(10), fn, (1, 0, 1, 1))
    assert with_fn["pmF1"] == pytest.approx(exp["pmF1"], abs=1e-12)
    assert with_fn["IL_MCC"] == pytest.approx(exp["IL_MCC"], abs=1e-12)


def test_saco_score_threshold_and_crowd() -> None:
    gt = row_masks((0, 9), (12, 15))
    pred = row_masks((0, 9), (12, 15))
    below = saco_metrics([pair(gt, pred, [0.9, 0.4999])])
    at = saco_metrics([pair(gt, pred, [0.9, 0.5])])  # 0.5 itself is kept
    assert below["pmF1"] < at["pmF1"]
    crowd = saco_metrics([pair(gt, pred[:1], [0.9], gt_iscrowd=torch.tensor([False, True]))])
    assert crowd == saco_metrics([pair(gt[:1], pred[:1], [0.9])])  # crowd GT is dropped


def random_pairs(rng: np.random.Generator, n: int, h: int = 16, w: int = 20) -> list[dict]:
    pairs = []
    for i in range(n):
        n_gt = int(rng.choice([0, 0, 1, 2, 3, 5]))
        gt = discs(rng, n_gt, h, w, rmax=7)
        n_near = int(rng.integers(0, n_gt + 1))
        near = np.roll(gt[:n_near], rng.integers(-2, 3), axis=2)
        pred = np.concatenate([near, discs(rng, int(rng.integers(0, 3)), h, w, rmax=7)])
        if len(pred) and rng.random() < 0.2:
            pred[0] = False  # an empty prediction
        scores = rng.random(len(pred))
        pairs.append(pair(gt, pred, scores, phrase=f"p{i % 4}"))
    return pairs


def test_saco_matches_loop_reference_on_random_cases() -> None:
    rng = np.random.default_rng(11)
    for _ in range(25):
        pairs = random_pairs(rng, int(rng.integers(1, 12)))
        ours, ref = saco_metrics(pairs), ref_saco(pairs)
        assert ours.keys() == ref.keys()
        for key in ref:
            assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def test_only_negative_phrases() -> None:
    nothing = [pair(empty(), empty(), [], phrase=f"p{i}") for i in range(3)]
    assert saco_metrics(nothing)["cgF1"] == 0.0
    assert grounding_accuracy(nothing) == 1.0
    assert math.isnan(concept_recall(nothing))
    hallucinated = [*nothing, pair(empty(), row_masks((0, 3)), [0.9], phrase="ghost")]
    assert grounding_accuracy(hallucinated) == 0.75
    assert saco_metrics(hallucinated)["IL_MCC"] == 0.0


# --------------------------------------------------------------------------------------
# Matched instance IoU (SAM3's analogue of SAM2's per-object IoU)
# --------------------------------------------------------------------------------------


def test_matched_instance_ious_hand_computed_and_score_threshold() -> None:
    gt = row_masks((0, 9), (12, 15))
    pred = row_masks((12, 16), (0, 10), (1, 3))
    p = pair(gt, pred, [0.9, 0.4, 0.95])
    # kept at 0.5: p0 -> B (4/5), p2 -> A (3/10, the only one left for it)
    np.testing.assert_allclose(matched_instance_ious(p), [3 / 10, 4 / 5])
    # at 0.3 p1 is kept too and the Hungarian takes p1 -> A (10/11) over p2 -> A
    np.testing.assert_allclose(matched_instance_ious(p, score_threshold=0.3), [10 / 11, 4 / 5])
    # nothing kept: every instance counts 0; a negative phrase has no instance at all
    np.testing.assert_array_equal(matched_instance_ious(pair(gt, pred, [0.1] * 3)), [0, 0])
    assert matched_instance_ious(pair(empty(), pred, [0.9] * 3)).shape == (0,)
    negative = pair(empty(), row_masks((0, 3)), [0.9], phrase="ghost")
    assert mean_matched_iou([p, negative]) == pytest.approx((3 / 10 + 4 / 5) / 2)
    assert mean_matched_iou([negative]) == 0.0


def test_mean_matched_iou_matches_loop_reference() -> None:
    rng = np.random.default_rng(4)
    for _ in range(10):
        pairs = random_pairs(rng, int(rng.integers(1, 8)))
        total = count = 0.0
        for q in pairs:
            gt = np.asarray(q["gt"], dtype=bool)
            if "gt_iscrowd" in q:
                gt = gt[~np.asarray(q["gt_iscrowd"], dtype=bool)]
            pred = np.asarray(q["pred"], dtype=bool)[np.asarray(q["scores"]) >= 0.5]
            count += len(gt)
            if len(gt) and len(pred):
                ious = ref_coco_iou(pred, gt)
                rows, cols = linear_sum_assignment(-ious)
                total += ious[rows, cols].sum()
        want = total / count if count else 0.0
        assert mean_matched_iou(pairs) == pytest.approx(want, abs=1e-12)


# --------------------------------------------------------------------------------------
# Concept recall, grounding, attributes
# --------------------------------------------------------------------------------------


def test_concept_recall_needs_maximum_matching() -> None:
    # overlapping instances A = [0, 9], B = [2, 11]; p1 = [0, 10] fits both, p2 = [1, 5] only A
    gt = row_masks((0, 9), (2, 11))
    pred = row_masks((0, 10), (1, 5))
    iou = pairwise_mask_iou(pred, gt)
    np.testing.assert_allclose(iou, [[10 / 11, 9 / 12], [5 / 10, 4 / 11]])
    # greedy (p1 takes its best, A) and IoU-maximising Hungarian (10/11 + 4/11 > 9/12 + 1/2)
    # both leave B unmatched; the maximum matching p1-B, p2-A finds both instances
    rows, cols = linear_sum_assignment(-iou)
    assert (iou[rows, cols] >= 0.5).sum() == 1
    assert concept_recall([pair(gt, pred, [0.9, 0.8])]) == 1.0
    assert concept_recall([pair(gt, pred, [0.9, 0.3])]) == 0.5  # p2 is below the score cut


def test_concept_recall_averages_over_phrases() -> None:
    a = row_masks((0, 3))
    pairs = [
        pair(a, a.clone(), [0.9], phrase="apple"),  # 1 of 1
        pair(row_masks((0, 3), (5, 8), (10, 13)), empty(), [], phrase="apple"),  # 0 of 3
        pair(a, a.clone(), [0.9], phrase="leaf"),  # 1 of 1
        pair(empty(), a.clone(), [0.9], phrase="pear"),  # no GT: not a recall phrase
    ]
    # apple: (1 + 0) / (1 + 3) = 0.25, leaf: 1.0 -> mean 0.625 (not 2/3 per pair, not 2/5)
    assert concept_recall(pairs) == pytest.approx(0.625)


def test_concept_recall_matches_brute_force() -> None:
    import itertools

    rng = np.random.default_rng(5)
    for _ in range(30):
        (p,) = random_pairs(rng, 1)
        gt = np.asarray(p["gt"])
        if len(gt) == 0:
            continue
        kept = np.asarray(p["pred"])[np.asarray(p["scores"]) >= 0.5]
        ok = ref_coco_iou(kept, gt) >= 0.5
        best = 0
        for k in range(min(ok.shape) + 1):
            for rows in itertools.permutations(range(ok.shape[0]), k):
                for cols in itertools.combinations(range(ok.shape[1]), k):
                    if all(ok[r, c] for r, c in zip(rows, cols)):
                        best = max(best, k)
        assert concept_recall([p]) == pytest.approx(best / len(gt))


def test_grounding_accuracy() -> None:
    a = row_masks((0, 3))
    pairs = [
        pair(a, a.clone(), [0.9]),  # present, found
        pair(empty(), empty(), []),  # absent, nothing
        pair(empty(), a.clone(), [0.9]),  # absent, hallucinated
        pair(a, a.clone(), [0.2]),  # present, only a low-score prediction
    ]
    assert grounding_accuracy(pairs) == 0.5
    # presence is decided from predictions, even a wrong-place one
    assert grounding_accuracy([pair(a, row_masks((10, 19)), [0.9])]) == 1.0
    assert math.isnan(grounding_accuracy([]))


def test_attribute_accuracy() -> None:
    cands = row_masks((0, 3), (5, 8), (10, 13))
    labels = torch.tensor([True, False, True])  # "ripe apple": 0 and 2 are ripe
    pred = row_masks((0, 3), (5, 8))  # includes 0 (right) and 1 (wrong), misses 2 (wrong)
    p = pair(cands[[0, 2]], pred, [0.9, 0.8], candidates=cands, candidate_labels=labels)
    assert attribute_accuracy([p]) == pytest.approx(1 / 3)
    perfect = pair(
        cands[[0, 2]], cands[[0, 2]], [0.9, 0.9], candidates=cands, candidate_labels=labels
    )
    assert attribute_accuracy([perfect, p]) == pytest.approx(4 / 6)  # per instance overall
    assert attribute_accuracy([pair(cands, cands, [0.9] * 3)]) is None  # no attribute pairs
    with pytest.raises(KeyError, match="candidate_labels"):
        attribute_accuracy([pair(cands, cands, [0.9] * 3, candidates=cands)])


# --------------------------------------------------------------------------------------
# COCO mask AP
# --------------------------------------------------------------------------------------


def test_coco_ap_perfect_and_wrong() -> None:
    rng = np.random.default_rng(4)
    images = []
    for _ in range(3):
        gt = discs(rng, 4, 40, 50)
        gt = gt[gt.any(axis=(1, 2))]
        images.append(
            {
                "gt": torch.from_numpy(gt),
                "pred": torch.from_numpy(gt.copy()),
                "scores": torch.rand(len(gt)),
            }
        )
    perfect = coco_mask_ap(images)
    assert perfect["mask_AP"] == 1.0 and perfect["mask_AP50"] == 1.0 and perfect["mask_AR"] == 1.0
    wrong = [dict(e) for e in images]
    wrong[0]["pred"] = torch.roll(wrong[0]["pred"], 6, dims=2)  # misplaced masks
    assert coco_mask_ap(wrong)["mask_AP"] < 1.0
    # an image without ground truth and without predictions changes nothing
    blank = {"gt": torch.zeros(0, 40, 50), "pred": torch.zeros(0, 40, 50), "scores": torch.zeros(0)}
    assert coco_mask_ap([*images, blank])["mask_AP"] == 1.0
    # ground truth but no predictions anywhere: AP 0, not an error
    none = [{**e, "pred": e["pred"][:0], "scores": e["scores"][:0]} for e in images]
    assert coco_mask_ap(none)["mask_AP"] == 0.0
    with pytest.raises(ValueError, match="at least one"):
        coco_mask_ap([])


def test_coco_ap_is_not_capped_at_100_detections() -> None:
    # 150 separate instances on one image (MinneApple frames hold up to 123 apples)
    gt = np.zeros((150, 60, 100), dtype=bool)
    for i in range(150):
        y, x = divmod(i, 15)
        gt[i, 6 * y : 6 * y + 4, 6 * x : 6 * x + 4] = True
    image = {"gt": gt, "pred": gt.copy(), "scores": np.linspace(0.99, 0.5, 150)}
    out = coco_mask_ap([image])
    assert out["mask_AP"] == 1.0 and out["mask_AR"] == 1.0
    assert out["mask_AR10"] == pytest.approx(10 / 150)
    # what the default maxDets=100 would have reported
    assert ref_coco_ap([image], [1, 10, 100]) < 0.7


def test_coco_ap_matches_pycocotools_on_random_cases() -> None:
    rng = np.random.default_rng(9)
    for _ in range(6):
        images = []
        for _ in range(int(rng.integers(1, 4))):
            gt = discs(rng, int(rng.integers(0, 5)), 30, 40)
            gt = gt[gt.any(axis=(1, 2))]
            keep = gt[: rng.integers(0, len(gt) + 1)]
            pred = np.concatenate(
                [np.roll(keep, int(rng.integers(0, 3)), axis=2), discs(rng, 2, 30, 40)]
            )
            images.append({"gt": gt, "pred": pred, "scores": rng.random(len(pred))})
        assert coco_mask_ap(images)["mask_AP"] == pytest.approx(ref_coco_ap(images, [1, 10, 100]))


def test_kept_match_rate_counts_kept_detections_on_negative_phrases_as_unmatched() -> None:
    from sam_hf.metrics.concepts import kept_match_rate

    a, b = row_masks((0, 3)), row_masks((5, 8))
    pairs = [
        pair(a, torch.cat([a, b]), [0.9, 0.8]),  # 2 kept: one matches, one is a false positive
        pair(empty(), a.clone(), [0.7], phrase="pear"),  # negative phrase: 1 kept, unmatched
        pair(a, a.clone(), [0.2]),  # below the score cut: not kept
    ]
    assert kept_match_rate(pairs) == (pytest.approx(1 / 3), 3)
    assert kept_match_rate(pairs[2:]) == (None, 0)  # undefined, not 0 or NaN
