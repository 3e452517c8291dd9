"""The overlay grid of an evaluation: the best and worst images, ground truth vs each model.

Rows are the ``k`` best then the ``k`` worst images by per-image IoU (averaged over the models
shown); columns the ground truth, then each model's prediction. SAM2 columns show the
single-centre-point protocol (the click drawn as a dot), SAM3 columns the kept predictions
from text. Instance colours follow the ground-truth panel (SAM2: the mask answering instance
k's prompt; SAM3: the instance a prediction was Hungarian-matched to); SAM3 predictions
matching nothing are white. Panels are downscaled to :data:`PANEL_SIDE` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from sam_hf.data import rle
from sam_hf.data.overlays import instance_colors, overlay_masks
from sam_hf.eval.compare import Evaluation, ModelEvaluation
from sam_hf.metrics.matching import SCORE_THRESHOLD, hungarian, pairwise_mask_iou

#: Colour of SAM3 predictions that match no ground-truth instance in the overlays (the instance
#: palette is saturated, so pure white never collides with it).
FALSE_POSITIVE_RGB = (255, 255, 255)
#: Longest side of one overlay panel, in pixels (outlines stay visible on 1280 px frames).
PANEL_SIDE = 360


def _short_prompt(proto: str) -> str:
    """Column title of the overlay grid: what the model was given."""
    if proto.startswith("points"):
        return f"{proto[len('points') :]} points / instance"
    return {"point": "1 centre click / instance", "box": "GT box / instance"}.get(
        proto, "text only"
    )


def _panel_scale(h: int, w: int) -> float:
    return min(1.0, PANEL_SIDE / max(h, w))


def _resize_image(img: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))


def _resize_masks(masks: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0 or masks.shape[0] == 0:
        return masks
    h, w = masks.shape[1:]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack(
        [
            np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
            for m in masks
        ]
    )


def _gt_masks(row: dict) -> np.ndarray:
    objs = [o for o in row["objects"] if not o["iscrowd"]]
    return rle.decode_many([o["segmentation"] for o in objs], row["height"], row["width"])


def _sam3_panel(rec: dict, gt_rles: list[str], n_gt: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Kept SAM3 predictions of one image, coloured like the instance they matched (else FP)."""
    masks, cols = [], []
    palette = instance_colors(max(n_gt, 1))
    index = {c: k for k, c in enumerate(gt_rles)}
    n_fp = 0
    for pair in rec["pairs"]:
        h, w = pair["size"]
        keep = [i for i, s in enumerate(pair["scores"]) if s >= SCORE_THRESHOLD]
        if not keep:
            continue
        pred = rle.decode_many([pair["pred"][i] for i in keep], h, w)
        gt = rle.decode_many(pair["gt"], h, w)
        color = [FALSE_POSITIVE_RGB] * len(keep)
        if gt.shape[0]:
            iou = pairwise_mask_iou(pred, gt)
            rows, cc = hungarian(iou)
            for r, c in zip(rows, cc):
                if iou[r, c] > 0:
                    k = index.get(rle.encode(gt[c])["counts"])
                    if k is not None:
                        color[r] = tuple(int(v) for v in palette[k])
        n_fp += sum(1 for c in color if c == FALSE_POSITIVE_RGB)
        masks.append(pred)
        cols.extend(color)
    if not masks:
        return np.zeros((0, 1, 1), bool), np.zeros((0, 3), np.uint8), 0
    return np.concatenate(masks), np.asarray(cols, dtype=np.uint8), n_fp


def select_best_worst(
    ev: Evaluation, shown: Sequence[tuple[ModelEvaluation, str]], k: int = 3
) -> list[tuple[str, str, float]]:
    """``[(tag, image_id, mean IoU)]``: the ``k`` best then the ``k`` worst images by per-image
    IoU averaged over the shown (model, protocol) columns; each image appears once."""
    scores: dict[str, list[float]] = {}
    for m, proto in shown:
        for iid, v in m.per_image_iou.get(proto, {}).items():
            scores.setdefault(iid, []).append(v)
    common = {iid: float(np.mean(v)) for iid, v in scores.items() if len(v) == len(shown)}
    ranked = sorted(common.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= 2 * k:
        return [(f"#{i + 1} of {len(ranked)}", iid, v) for i, (iid, v) in enumerate(ranked)]
    best = [(f"best {i + 1}", iid, v) for i, (iid, v) in enumerate(ranked[:k])]
    worst = [(f"worst {i + 1}", iid, v) for i, (iid, v) in enumerate(reversed(ranked[-k:]))]
    return best + worst


def _shown_columns(ev: Evaluation) -> list[tuple[ModelEvaluation, str]]:
    """(model, protocol) of each prediction column: SAM2's ``point`` protocol, SAM3's text."""
    shown = []
    for m in ev.models:
        if m.family == "sam2":
            proto = "point" if "point" in m.records else next(iter(m.records), None)
        else:
            proto = "text"
        if proto is not None and m.records.get(proto):
            shown.append((m, proto))
    return shown


def _caption(ax: Axes, text: str) -> None:
    """White text on a dark box in the panel's lower left corner."""
    ax.text(
        0.01,
        0.01,
        text,
        transform=ax.transAxes,
        fontsize=7,
        color="white",
        va="bottom",
        ha="left",
        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "edgecolor": "none"},
    )


def _draw_sam2(
    ax: Axes, small: np.ndarray, rec: dict, palette: np.ndarray, size: tuple[int, int]
) -> None:
    """SAM2's masks in the colours of the instances they answer, its clicks as dots."""
    h, w = size
    scale = _panel_scale(h, w)
    pred = rle.decode_many(rec["pred"], h, w)
    colors = palette[: len(pred)]
    ax.imshow(
        overlay_masks(small, _resize_masks(pred, scale), color=colors), interpolation="nearest"
    )
    if rec.get("points"):
        pts = np.asarray(rec["points"], dtype=float)
        sx, sy = small.shape[1] / w, small.shape[0] / h
        ax.scatter(
            (pts[:, 0] + 0.5) * sx - 0.5,
            (pts[:, 1] + 0.5) * sy - 0.5,
            s=14,
            c=colors[: len(pts)] / 255.0,
            edgecolors="white",
            linewidths=0.8,
        )


def _draw_sam3(
    ax: Axes, small: np.ndarray, rec: dict, gt_rles: list[str], n_gt: int, scale: float
) -> str:
    """SAM3's kept masks, coloured by matched instance; returns the panel's count caption."""
    pred, colors, n_fp = _sam3_panel(rec, gt_rles, n_gt)
    if pred.shape[0]:
        panel = overlay_masks(small, _resize_masks(pred, scale), color=colors)
    else:
        panel = small
    ax.imshow(panel, interpolation="nearest")
    return f", {pred.shape[0]} kept, {n_fp} unmatched"


def _draw_row(
    axes: Sequence[Axes],
    row: dict,
    shown: list[tuple[ModelEvaluation, str]],
    by_image: dict[tuple[str, str], dict[str, dict]],
    pick: tuple[str, str, float],
    first: bool,
) -> None:
    """One image: ground truth, then each shown model's prediction with its IoU."""
    tag, iid, score = pick
    img = np.asarray(row["image"].convert("RGB"))
    h, w = img.shape[:2]
    scale = _panel_scale(h, w)
    small = _resize_image(img, scale)
    gt = _gt_masks(row)
    gt_rles = [rle.encode(m)["counts"] for m in gt]
    palette = instance_colors(max(len(gt), 1))
    ax = axes[0]
    ax.imshow(overlay_masks(small, _resize_masks(gt, scale)), interpolation="nearest")
    ax.set_ylabel(f"{tag}: image {iid}\nmean IoU {score:.2f}", fontsize=8)
    _caption(ax, f"{len(gt)} instances")
    if first:
        ax.set_title("ground truth", fontsize=9)
    for ax, (m, proto) in zip(axes[1:], shown):
        rec = by_image[(m.label, proto)].get(iid)
        value = m.per_image_iou[proto].get(iid)
        if m.family == "sam2" and rec is not None:
            _draw_sam2(ax, small, rec, palette, (h, w))
            info = f"IoU {value:.2f}" if value is not None else ""
        elif rec is not None:
            counts = _draw_sam3(ax, small, rec, gt_rles, len(gt), scale)
            info = (f"matched IoU {value:.2f}" if value is not None else "") + counts
        else:
            ax.imshow(small)
            info = "no prediction"
        _caption(ax, info)
        if first:
            ax.set_title(f"{m.label} ({_short_prompt(proto)})", fontsize=9)


def overlay_grid(ev: Evaluation, ds: Any, path: Path, k: int = 3) -> Path | None:
    """Rows: the best and worst images; columns: ground truth, then each model's prediction.

    See the module docstring for what the columns and colours show. None when no image was
    scored by every shown model.
    """
    shown = _shown_columns(ev)
    picks = select_best_worst(ev, shown, k)
    if not picks:
        return None
    n_rows, n_cols = len(picks), len(shown) + 1
    top = ds[ev.image_indices[picks[0][1]]]
    aspect = top["width"] / top["height"]
    panel_h = 2.6
    fig = Figure(figsize=(panel_h * aspect * n_cols + 0.6, panel_h * n_rows + 0.6))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    by_image = {
        (m.label, proto): {r["image_id"]: r for r in m.records[proto]} for m, proto in shown
    }
    for r, pick in enumerate(picks):
        row = ds[ev.image_indices[pick[1]]]
        _draw_row(axes[r], row, shown, by_image, pick, first=r == 0)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    caption = (
        "Best and worst images by per-image IoU (averaged over the models shown). Colours follow "
        "the ground-truth instances"
    )
    if any(m.family == "sam3" for m, _ in shown):
        caption += "; white = a SAM3 prediction that matches none"
    fig.suptitle(caption + ".", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    return path
