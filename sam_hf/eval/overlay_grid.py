"""The overlay grid of an evaluation: the best and worst images, ground truth vs each model.

Rows are the ``k`` best then the ``k`` worst images by per-image IoU (averaged over the models
shown); columns the ground truth, then each model's prediction. SAM2 columns show the
single-centre-point protocol (the click drawn as a dot), and so do SAM3 tracker columns (with
the same clicks); SAM3 columns the kept predictions from text. Masks take one colour per
phrase (the legend names them): SAM2's mask the phrase of the instance whose prompt it
answers, SAM3's the phrase it was asked for. Beside each predicted
mask, where there is room: its IoU with the ground truth it answers (SAM2) or was
Hungarian-matched to (SAM3; "no match" when none) and ``s``, the model's score. Panels are
448-640 px on their long side (:data:`PANEL_SIDE`; small images upsampled by nearest
neighbour), so the grid is at least :data:`~sam_hf.eval.pictures.MIN_LONG_SIDE` px (see
:mod:`sam_hf.eval.pictures`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sam_hf.config.validate import GEOMETRIC_FAMILIES, family_name
from sam_hf.data import rle
from sam_hf.eval.compare import Evaluation, ModelEvaluation
from sam_hf.eval.pictures import (
    RGB,
    BoxXYXY,
    freeze_layout,
    legend_height,
    line_px,
    mask_box,
    new_figure,
    paint,
    panel_size,
    phrase_colors,
    phrase_legend,
    place_labels,
    plural,
    resize_image,
    resize_masks,
    save_figure,
    wrap,
)
from sam_hf.metrics.matching import SCORE_THRESHOLD, hungarian, pairwise_mask_iou

#: Long side of one overlay panel, in pixels: small images are upsampled by an integer factor
#: to at least PANEL_SIDE[0], larger ones scaled down to at most PANEL_SIDE[1] (a 1280 px
#: orchard frame at 640 keeps its small apples visible).
PANEL_SIDE = (448, 640)
#: Font sizes (points) of the figure title, column titles and row labels, panel captions.
TITLE_FONTSIZE, HEADER_FONTSIZE, CAPTION_FONTSIZE = 10, 9, 8


def _short_prompt(proto: str) -> str:
    """Column title of the overlay grid: what the model was given."""
    if proto.startswith("points"):
        return f"{proto[len('points') :]} points / instance"
    return {"point": "1 centre click / instance", "box": "GT box / instance"}.get(
        proto, "text only"
    )


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
        if m.family in GEOMETRIC_FAMILIES:
            proto = "point" if "point" in m.records else next(iter(m.records), None)
        else:
            proto = "text"
        if proto is not None and m.records.get(proto):
            shown.append((m, proto))
    return shown


@dataclass
class _Panel:
    """One drawn cell: the painted image, its caption, the numbers beside its masks, clicks."""

    image: np.ndarray
    caption: str
    labels: list[tuple[BoxXYXY, str, RGB]] = field(default_factory=list)
    points: np.ndarray | None = None
    point_colors: np.ndarray | None = None


def _phrases(row: dict) -> list[str]:
    return [o["noun_phrase"] or o["category"] for o in row["objects"] if not o["iscrowd"]]


def _gt_masks(row: dict) -> np.ndarray:
    objs = [o for o in row["objects"] if not o["iscrowd"]]
    return rle.decode_many([o["segmentation"] for o in objs], row["height"], row["width"])


def _rgb(colors: dict[str, RGB], phrases: Sequence[str]) -> np.ndarray:
    return np.asarray([colors[p] for p in phrases], dtype=np.uint8).reshape(-1, 3)


def _number_label(iou: float | None, score: float | None) -> str:
    """What is known about one predicted mask: IoU with its ground truth, and its score."""
    parts = []
    if iou is not None:
        parts.append("no match" if np.isnan(iou) else f"IoU {iou:.2f}")
    if score is not None:
        parts.append(f"s {score:.2f}")
    return " ".join(parts)


def _kept(pair: dict) -> list[int]:
    return [i for i, s in enumerate(pair["scores"]) if s >= SCORE_THRESHOLD]


def _grid_phrases(rows: list[dict], cells: list[list[tuple[ModelEvaluation, dict | None]]]) -> list:
    """Every phrase drawn anywhere in the grid, ground truth first (fixes the colours)."""
    out = [p for row in rows for p in _phrases(row)]
    for row_cells in cells:
        for m, rec in row_cells:
            if rec is None:
                continue
            if m.family in GEOMETRIC_FAMILIES:
                out += list(rec.get("phrases") or [])
            else:
                out += [pair["phrase"] for pair in rec["pairs"] if _kept(pair)]
    return out


def _sam2_panel(
    base: np.ndarray, rec: dict, hw: tuple[int, int], colors: dict
) -> tuple[_Panel, int, int]:
    """SAM2's masks in the colours of the phrases of the instances they answer, its clicks as
    dots, each mask's IoU and predicted-IoU score beside it; also (masks, empty masks)."""
    h, w = hw
    size = base.shape[:2]
    pred = resize_masks(rle.decode_many(rec["pred"], h, w), size)
    phrases = list(rec.get("phrases") or [])
    phrases += ["object"] * (len(pred) - len(phrases))
    ious, scores = list(rec.get("iou") or []), list(rec.get("scores") or [])
    labels = []
    for k, m in enumerate(pred):
        box = mask_box(m)
        if box is not None:
            iou = ious[k] if k < len(ious) else None
            score = scores[k] if k < len(scores) else None
            labels.append((box, _number_label(iou, score), colors[phrases[k]]))
    rgb = _rgb(colors, phrases[: len(pred)])
    panel = _Panel(paint(base, pred, rgb), "", labels)
    if rec.get("points"):
        pts = np.asarray(rec["points"], dtype=float).reshape(-1, 2)
        sx, sy = size[1] / w, size[0] / h
        panel.points = np.stack([(pts[:, 0] + 0.5) * sx - 0.5, (pts[:, 1] + 0.5) * sy - 0.5], 1)
        panel.point_colors = rgb[: len(pts)] / 255.0
    return panel, len(pred), len(pred) - len(labels)


def _sam3_panel(base: np.ndarray, rec: dict, colors: dict) -> tuple[_Panel, int, int]:
    """SAM3's kept masks in their phrase's colour, each with the IoU of the ground truth it was
    Hungarian-matched to (or "no match") and its score; also (kept, unmatched) counts."""
    size = base.shape[:2]
    masks, phrases, labels, n_unmatched = [], [], [], 0
    for pair in rec["pairs"]:
        keep = _kept(pair)
        if not keep:
            continue
        h, w = pair["size"]
        pred = rle.decode_many([pair["pred"][i] for i in keep], h, w)
        gt = rle.decode_many(pair["gt"], h, w)
        matched = np.full(len(keep), np.nan)
        if gt.shape[0]:
            iou = pairwise_mask_iou(pred, gt)
            for r, c in zip(*hungarian(iou)):
                if iou[r, c] > 0:
                    matched[r] = iou[r, c]
        n_unmatched += int(np.isnan(matched).sum())
        shown = resize_masks(pred, size)
        for j, i in enumerate(keep):
            box = mask_box(shown[j])
            if box is not None:
                label = _number_label(float(matched[j]), float(pair["scores"][i]))
                labels.append((box, label, colors[pair["phrase"]]))
        masks.append(shown)
        phrases += [pair["phrase"]] * len(keep)
    pred = np.concatenate(masks) if masks else np.zeros((0, *size), bool)
    panel = _Panel(paint(base, pred, _rgb(colors, phrases)), "", labels)
    return panel, len(phrases), n_unmatched


def _row_panels(
    row: dict, cells: list[tuple[ModelEvaluation, dict | None, float | None]], colors: dict
) -> list[_Panel]:
    """One image: the ground truth, then each shown model's prediction with its captions."""
    img = np.asarray(row["image"].convert("RGB"))
    hw = img.shape[:2]
    base = resize_image(img, panel_size(*hw, *PANEL_SIDE))
    gt = resize_masks(_gt_masks(row), base.shape[:2])
    out = [_Panel(paint(base, gt, _rgb(colors, _phrases(row))), plural(len(gt), "instance"))]
    for m, rec, value in cells:
        if rec is None:
            out.append(_Panel(base, "no prediction"))
        elif m.family in GEOMETRIC_FAMILIES:
            panel, n, empty = _sam2_panel(base, rec, hw, colors)
            mean = f"mean IoU {value:.2f}, " if value is not None else ""
            panel.caption = mean + plural(n, "mask") + (f" ({empty} empty)" if empty else "")
            out.append(panel)
        else:
            panel, kept, unmatched = _sam3_panel(base, rec, colors)
            mean = f"matched IoU {value:.2f}, " if value is not None else ""
            panel.caption = f"{mean}{kept} kept, {unmatched} unmatched"
            out.append(panel)
    return out


def _title(shown: list[tuple[ModelEvaluation, str]]) -> str:
    text = (
        "Best and worst images by per-image IoU (mean over the models shown). One colour per "
        "phrase; beside each predicted mask, where there is room: IoU with its ground truth "
        "and s = the model's score"
    )
    told = [family_name(f) for f in GEOMETRIC_FAMILIES if any(m.family == f for m, _ in shown)]
    if told:
        text += f"; dots: the clicks given to {' and '.join(told)}"
        text += " (the same for both)" if len(told) > 1 else ""
    if any(m.family == "sam3" for m, _ in shown):
        text += "; 'no match': a SAM3 mask matched to no ground truth"
    return text + "."


def _lines(texts: Sequence[str]) -> int:
    return max((t.count("\n") + 1 for t in texts), default=1)


def _layout(
    n_rows: int, n_cols: int, panel_hw: tuple[int, int], texts: dict[str, Any], colors: dict
) -> tuple[Figure, np.ndarray]:
    """A figure sized so that panels keep about ``panel_hw`` pixels and every title, header,
    row label and caption fits (wrapped to its panel) beside them; its axes grid."""
    ph, pw = panel_hw
    headers = [wrap(t, 0.92 * pw, HEADER_FONTSIZE) for t in texts["headers"]]
    row_labels = [wrap(t, 0.92 * ph, HEADER_FONTSIZE) for t in texts["rows"]]
    captions = [[wrap(c, 0.92 * pw, CAPTION_FONTSIZE) for c in r] for r in texts["captions"]]
    cap_lines = max(_lines(r) for r in captions)
    width = n_cols * (pw + 14) + line_px(HEADER_FONTSIZE, _lines(row_labels)) + 30
    title = wrap(texts["title"], width - 40, TITLE_FONTSIZE)
    height = (
        n_rows * (ph + line_px(CAPTION_FONTSIZE, cap_lines) + 16)
        + line_px(HEADER_FONTSIZE, _lines(headers))
        + line_px(TITLE_FONTSIZE, _lines([title]))
        + 40
        + legend_height(colors, width)
    )
    fig = new_figure(width, height)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, c in np.ndindex(n_rows, n_cols):
        ax = axes[r, c]
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(captions[r][c], fontsize=CAPTION_FONTSIZE)
        if r == 0:
            ax.set_title(headers[c], fontsize=HEADER_FONTSIZE)
        if c == 0:
            ax.set_ylabel(row_labels[r], fontsize=HEADER_FONTSIZE)
    fig.suptitle(title, fontsize=TITLE_FONTSIZE)
    phrase_legend(fig, colors, fig.get_figwidth() * fig.dpi)
    return fig, axes


def _draw(ax: Axes, panel: _Panel) -> None:
    ax.imshow(panel.image, interpolation="nearest")
    if panel.points is not None and len(panel.points):
        ax.scatter(
            panel.points[:, 0],
            panel.points[:, 1],
            s=30,
            c=panel.point_colors,
            edgecolors="white",
            linewidths=1.0,
            zorder=3,
        )


def overlay_grid_figure(ev: Evaluation, ds: Any, k: int = 3) -> Figure | None:
    """The grid as a Figure (rows: best and worst images; columns: ground truth, then each
    model); None when no image was scored by every shown model. See the module docstring."""
    shown = _shown_columns(ev)
    picks = select_best_worst(ev, shown, k)
    if not picks:
        return None
    by_image = {
        (m.label, proto): {r["image_id"]: r for r in m.records[proto]} for m, proto in shown
    }
    rows = [ds[ev.image_indices[iid]] for _, iid, _ in picks]
    cells = [
        [
            (m, by_image[(m.label, proto)].get(iid), m.per_image_iou[proto].get(iid))
            for m, proto in shown
        ]
        for _, iid, _ in picks
    ]
    colors = phrase_colors(_grid_phrases(rows, [[c[:2] for c in rc] for rc in cells]))
    grid = [_row_panels(row, rc, colors) for row, rc in zip(rows, cells)]
    texts = {
        "title": _title(shown),
        "headers": ["ground truth"] + [f"{m.label} ({_short_prompt(p)})" for m, p in shown],
        "rows": [f"{tag}: image {iid}, mean IoU {v:.2f}" for tag, iid, v in picks],
        "captions": [[p.caption for p in r] for r in grid],
    }
    size = panel_size(rows[0]["height"], rows[0]["width"], *PANEL_SIDE)
    fig, axes = _layout(len(grid), len(shown) + 1, size, texts, colors)
    for r, c in np.ndindex(axes.shape):
        _draw(axes[r, c], grid[r][c])
    freeze_layout(fig)
    for r, c in np.ndindex(axes.shape):
        place_labels(axes[r, c], grid[r][c].labels)
    return fig


def overlay_grid(ev: Evaluation, ds: Any, path: Path, k: int = 3) -> Path | None:
    """Save :func:`overlay_grid_figure` as a PNG at ``path``; None when there is no grid."""
    fig = overlay_grid_figure(ev, ds, k)
    return None if fig is None else save_figure(fig, path)
