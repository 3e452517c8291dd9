"""Writing an evaluation down: tables (report.md), report.json, report.csv, plots, overlays.

:func:`write_report` turns an :class:`sam_hf.eval.protocols.Evaluation` into files a person reads
(``report.md`` with every table, PNG charts, a grid of the best and worst images) and files a
program reads (``report.json`` with every number, ``report.csv`` in long format, and
``records/<model>.json`` with the predictions as RLE, from which every number can be recomputed).
:func:`plot_run` draws the loss and metric curves of a training run from its ``training.log``.

Matplotlib runs headless (the Agg backend); nothing here needs a display.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sam_hf.data import rle  # noqa: E402
from sam_hf.data.overlays import instance_colors, overlay_masks  # noqa: E402
from sam_hf.eval.protocols import Evaluation, ModelEvaluation, _jsonable  # noqa: E402
from sam_hf.metrics.matching import SCORE_THRESHOLD, hungarian, pairwise_mask_iou  # noqa: E402

#: Display names of metric keys (tables and plots).
METRIC_NAMES = {
    "mean_iou": "mean IoU",
    "mean_dice": "mean Dice",
    "mean_boundary_f1": "Boundary F1",
    "iou_at_50": "IoU>=0.5",
    "cgF1": "cgF1",
    "pmF1": "pmF1",
    "IL_MCC": "IL_MCC",
    "cgF1_50": "cgF1@50",
    "cgF1_75": "cgF1@75",
    "concept_recall": "concept recall",
    "grounding_accuracy": "grounding acc.",
    "attribute_accuracy": "attribute acc.",
    "mask_AP": "mask AP",
    "mask_AP50": "AP50",
    "mask_AP75": "AP75",
    "mask_AR": "mask AR",
    "mean_instance_iou": "mean instance IoU",
    "instance_recall": "instance recall",
}
SAM2_TABLE = ("mean_iou", "mean_dice", "mean_boundary_f1", "iou_at_50")
SAM3_TABLE = (
    "cgF1",
    "pmF1",
    "IL_MCC",
    "cgF1_50",
    "cgF1_75",
    "concept_recall",
    "grounding_accuracy",
    "attribute_accuracy",
    "mask_AP",
    "mask_AP50",
    "mask_AR",
    "mean_iou",
)
SAM3_BARS = (
    "cgF1",
    "pmF1",
    "IL_MCC",
    "concept_recall",
    "grounding_accuracy",
    "mask_AP",
    "mean_iou",
)
COMMON = ("mean_instance_iou", "concept_recall", "instance_recall")
#: Colour of SAM3 predictions that match no ground-truth instance in the overlays (the instance
#: palette is saturated, so pure white never collides with it).
FALSE_POSITIVE_RGB = (255, 255, 255)
#: Longest side of one overlay panel, in pixels (outlines stay visible on 1280 px frames).
PANEL_SIDE = 360
_PROMPT_ORDER = ("point", "points", "box", "text")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _signed(v: float, integer: bool = False) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:+.0f}" if integer else f"{v:+.3f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(v) for v in r) + " |")
    return out


def _name(m: ModelEvaluation) -> str:
    return m.label


def _protocol_order(name: str) -> int:
    for i, p in enumerate(_PROMPT_ORDER):
        if name.startswith(p):
            return i
    return len(_PROMPT_ORDER)


# =============================================================================================
# report.md
# =============================================================================================


def markdown(ev: Evaluation, artefacts: Sequence[str] = ()) -> str:
    """The human report: what was evaluated how, then one table per question."""
    s = ev.settings
    d = ev.data
    lines = [
        "# Evaluation report",
        "",
        f"Mode `{ev.mode}` on `{d['path']}` split `{d['split']}`: {d['num_images']} images "
        f"(of {d['num_images_in_split']}), {d['num_objects']} annotated instances, seed {s.seed}."
        " Every model saw the same images.",
        "",
        "## Models",
        "",
    ]
    lines += _md_table(
        ["label", "family", "role", "source", "loaded as", "input px", "parameters"],
        [
            [
                m.label,
                m.family.upper(),
                m.role,
                f"`{m.source.source}`",
                m.source.describe(),
                m.resolution,
                f"{m.num_parameters:,}",
            ]
            for m in ev.models
        ],
    )
    sam2 = ev.by_family("sam2")
    sam3 = ev.by_family("sam3")
    if sam2 and sam3:
        lines += [
            "",
            "## SAM2 vs SAM3 (read with the prompts in mind)",
            "",
            "SAM2 is told *where* each object is (a prompt taken from that instance's ground "
            "truth); SAM3 is only told *what* to look for (the noun phrase) and must find every "
            "instance itself, and say 'none here' for negative phrases. The columns below mean "
            "the same for both: per ground-truth instance, SAM2's IoU for its own prompt vs "
            "SAM3's IoU of the prediction Hungarian-matched to it (0 when nothing was found); "
            "recall = instances reached with IoU >= 0.5 (concept recall: per phrase, then "
            "averaged over phrases; instance recall: pooled).",
            "",
        ]
        lines += _gap_table(ev)
    if sam2:
        lines += ["", "## SAM2: prompted segmentation (prompts from the ground truth)", ""]
        lines += [
            "Per-instance means over every annotated instance (DAVIS conventions: IoU, Dice, "
            "Boundary F1 at tolerance 0.008 of the diagonal); each prompt type is its own run.",
            "",
        ]
        rows = []
        for m in sam2:
            for proto, met in sorted(m.metrics.items(), key=lambda kv: _protocol_order(kv[0])):
                rows.append(
                    [m.label, m.role, s.prompt_label(proto)]
                    + [met.get(k) for k in SAM2_TABLE]
                    + [met.get("num_objects")]
                )
        lines += _md_table(
            ["model", "role", "prompt"] + [METRIC_NAMES[k] for k in SAM2_TABLE] + ["instances"],
            rows,
        )
        clicked = [m for m in sam2 if m.clicks]
        if clicked:
            lines += [
                "",
                "### Interactive: clicks to IoU",
                "",
                f"Up to {s.max_clicks} clicks per instance, each at the deepest pixel of the "
                "larger error region of the current mask (positive in a miss, negative in a "
                "false positive), with the previous mask logits fed back as a mask prompt. "
                "NoC@t = clicks until IoU >= t, counted as "
                f"{s.max_clicks} when never reached; NoF@t = instances that never reach it.",
                "",
            ]
            ks = sorted({1, min(3, s.max_clicks), min(5, s.max_clicks), s.max_clicks})
            tags = [f"{round(t * 100):d}" for t in s.noc_thresholds]
            header = ["model", "role"]
            header += [f"NoC@{t}" for t in tags] + [f"NoF@{t}" for t in tags]
            header += [f"mIoU@{k}" for k in ks] + ["instances"]
            rows = []
            for m in clicked:
                c = m.clicks
                rows.append(
                    [m.label, m.role]
                    + [c.get(f"NoC@{t}") for t in tags]
                    + [c.get(f"NoF@{t}") for t in tags]
                    + [c["miou_per_click"][k - 1] if c["miou_per_click"] else None for k in ks]
                    + [c["num_objects"]]
                )
            lines += _md_table(header, rows)
    if sam3:
        lines += ["", "## SAM3: concept segmentation from text", ""]
        lines += [
            "Every noun phrase of each image plus known-absent negative phrases "
            f"(negatives drawn from the `{d.get('negative_vocabulary_split', d['split'])}` "
            "split's vocabulary); a prediction counts when its score >= "
            f"{s.score_threshold}. SA-Co metrics (cgF1 = pmF1 x IL_MCC averaged over IoU "
            "0.5:0.95), concept recall, grounding / attribute accuracy, COCO mask AP/AR, and "
            "matched instance IoU.",
            "",
        ]
        rows = [
            [m.label, m.role]
            + [m.metrics["text"].get(k) for k in SAM3_TABLE]
            + [m.metrics["text"].get("num_pairs")]
            for m in sam3
        ]
        lines += _md_table(
            ["model", "role"]
            + ["matched IoU" if k == "mean_iou" else METRIC_NAMES.get(k, k) for k in SAM3_TABLE]
            + ["pairs"],
            rows,
        )
    comparisons = ev.comparisons()
    if comparisons:
        lines += ["", "## Baseline vs fine-tuned", ""]
        for fam, comp in comparisons.items():
            base = next(m for m in ev.models if m.label == comp["baseline"])
            tuned = next(m for m in ev.models if m.label == comp["fine_tuned"])
            lines += [f"### {fam.upper()}: `{base.source.source}` -> `{tuned.source.source}`", ""]
            rows = []
            for proto, delta in comp["delta"].items():
                before = base.clicks if proto == "clicks" else base.metrics.get(proto, {})
                after = tuned.clicks if proto == "clicks" else tuned.metrics.get(proto, {})
                for k, dv in delta.items():
                    if proto == "clicks" or k in SAM2_TABLE or k in SAM3_TABLE:
                        name = METRIC_NAMES.get(k, k)
                        if fam == "sam3" and k == "mean_iou":
                            name = "matched IoU"
                        rows.append(
                            [
                                s.prompt_label(proto),
                                name,
                                before.get(k),
                                after.get(k),
                                _signed(dv, integer=k.startswith("NoF")),
                            ]
                        )
            lines += _md_table(["protocol", "metric", "baseline", "fine-tuned", "change"], rows)
            lines.append("")
            lines.append("(NoC and NoF: lower is better; every other metric: higher is better.)")
            lines.append("")
    if ev.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in ev.notes]
    if artefacts:
        lines += ["", "## Files", ""]
        lines += [f"- `{a}`" for a in artefacts if not a.endswith(".png")] + [""]
        for a in artefacts:
            if a.endswith(".png"):
                lines += [f"![{a}]({a})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _gap_table(ev: Evaluation) -> list[str]:
    rows = [
        [r["model"], r["family"].upper(), r["prompt"]]
        + [r.get(k) for k in COMMON]
        + [r.get("num_instances")]
        for r in ev.gap_rows()
    ]
    return _md_table(
        ["model", "family", "prompt given"] + [METRIC_NAMES[k] for k in COMMON] + ["instances"],
        rows,
    )


# =============================================================================================
# report.csv, records
# =============================================================================================


def csv_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """Long format: one row per (model, protocol, metric)."""
    rows = []
    for m in ev.models:
        base = {"model": m.label, "family": m.family, "role": m.role, "source": m.source.source}
        for proto, met in m.metrics.items():
            for k, v in met.items():
                rows.append({**base, "protocol": proto, "metric": k, "value": v})
            for k, v in m.common.get(proto, {}).items():
                rows.append({**base, "protocol": proto, "metric": f"common/{k}", "value": v})
        if m.clicks:
            for k, v in m.clicks.items():
                if k == "miou_per_click":
                    for i, x in enumerate(v, start=1):
                        rows.append(
                            {**base, "protocol": "clicks", "metric": f"mIoU@{i}", "value": x}
                        )
                else:
                    rows.append({**base, "protocol": "clicks", "metric": k, "value": v})
    for r in rows:
        v = r["value"]
        if isinstance(v, float) and not math.isfinite(v):
            r["value"] = ""
    return rows


def write_csv(ev: Evaluation, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["model", "family", "role", "source", "protocol", "metric", "value"])
        w.writeheader()
        w.writerows(csv_rows(ev))


def write_records(ev: Evaluation, folder: Path) -> list[Path]:
    """``records/<label>.json``: per protocol the per-image records (RLE predictions and the
    per-instance values), plus the click curves -- enough to recompute every number."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for m in ev.models:
        doc = {
            "label": m.label,
            "family": m.family,
            "source": m.source.source,
            "records": m.records,
        }
        if m.click_curves:
            doc["click_curves"] = m.click_curves
        p = folder / f"{_safe(m.label)}.json"
        p.write_text(json.dumps(_jsonable(doc)))
        out.append(p)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# =============================================================================================
# Plots
# =============================================================================================


def _model_colors(ev: Evaluation) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m.label: cmap(i % 10) for i, m in enumerate(ev.models)}


def _bar_group(ax: Any, groups: Sequence[str], series: list[tuple[str, list, Any, str]]) -> None:
    """Grouped bars: ``series`` = [(legend label, values per group, colour, hatch)].

    Colour says which model, hatching which prompt; every bar carries its value.
    """
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (label, values, color, hatch) in enumerate(series):
        vals = [np.nan if v is None else float(v) for v in values]
        pos = x - 0.4 + width * (i + 0.5)
        with plt.rc_context({"hatch.linewidth": 1.3}):
            bars = ax.bar(
                pos,
                np.nan_to_num(vals, nan=0.0),
                width,
                label=label,
                color=color,
                hatch=hatch,
                edgecolor="white",
                linewidth=0.5,
            )
        for b, v in zip(bars, vals):
            txt = "n/a" if not math.isfinite(v) else f"{v:.2f}"
            ax.annotate(
                txt,
                (b.get_x() + b.get_width() / 2, max(b.get_height(), 0)),
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xticks(x)
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel("score (higher is better)", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


#: Hatching per protocol (bars): solid = one point / text, stripes = several points, dots = box.
_HATCH = {"points": "///", "point": "", "box": "..", "text": ""}
#: Line colour per protocol (histograms); "points" before "point" (prefix match).
_PROTO_COLORS = {
    "points": "tab:orange",
    "point": "tab:blue",
    "box": "tab:green",
    "text": "tab:purple",
}


def _by_protocol(table: dict[str, Any], proto: str, default: Any) -> Any:
    return next((v for k, v in table.items() if proto.startswith(k)), default)


def _hatch(proto: str) -> str:
    return _by_protocol(_HATCH, proto, "")


def plot_metric_bars(ev: Evaluation, path: Path) -> Path:
    """Per-family metric bars: SAM2 per model and prompt, SAM3 per model."""
    colors = _model_colors(ev)
    panels = [f for f in ("sam2", "sam3") if ev.by_family(f)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.0), squeeze=False)
    for ax, fam in zip(axes[0], panels):
        series = []
        if fam == "sam2":
            groups = [METRIC_NAMES[k] for k in SAM2_TABLE]
            for m in ev.by_family(fam):
                for proto in sorted(m.metrics, key=_protocol_order):
                    series.append(
                        (
                            f"{m.label} · {proto}",
                            [m.metrics[proto].get(k) for k in SAM2_TABLE],
                            colors[m.label],
                            _hatch(proto),
                        )
                    )
            ax.set_title("SAM2, prompts from ground truth")
        else:
            groups = ["matched IoU" if k == "mean_iou" else METRIC_NAMES[k] for k in SAM3_BARS]
            for m in ev.by_family(fam):
                series.append(
                    (m.label, [m.metrics["text"].get(k) for k in SAM3_BARS], colors[m.label], "")
                )
            ax.set_title("SAM3, text prompts only")
        _bar_group(ax, groups, series)
        ax.legend(
            fontsize=7,
            ncol=2 if fam == "sam2" else 4,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            frameon=False,
        )
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_gap(ev: Evaluation, path: Path) -> Path:
    """The common metrics side by side for every model and protocol (SAM2 vs SAM3)."""
    colors = _model_colors(ev)
    rows = ev.gap_rows()
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(rows) + 3), 4.2))
    series = [
        (
            f"{r['model']} · {r['prompt']}",
            [r.get(k) for k in COMMON],
            colors[r["model"]],
            _hatch(r["protocol"]),
        )
        for r in rows
    ]
    _bar_group(ax, [METRIC_NAMES[k] for k in COMMON], series)
    ax.set_title("Same instances, different prompts: SAM2 (geometry from GT) vs SAM3 (text)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_iou_histograms(ev: Evaluation, path: Path) -> Path:
    """Per-instance IoU distributions: one panel per model, one line per protocol."""
    n = len(ev.models)
    cols = min(n, 2)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 3.3 * rows_n), squeeze=False)
    bins = np.linspace(0.0, 1.0, 21)
    for ax, m in zip(axes.flat, ev.models):
        for proto in sorted(m.instance_ious, key=_protocol_order):
            vals = np.asarray(m.instance_ious[proto], dtype=float)
            if vals.size == 0:
                continue
            color = _by_protocol(_PROTO_COLORS, proto, "gray")
            what = "matched IoU from text" if proto == "text" else proto
            ax.hist(
                np.clip(vals, 0, 1),
                bins=bins,
                histtype="step",
                linewidth=1.6,
                color=color,
                label=f"{what} (mean {vals.mean():.2f}, n={vals.size})",
            )
        ax.set_title(f"{m.label} ({m.family.upper()}, {m.role})", fontsize=9)
        ax.set_xlabel("IoU per ground-truth instance")
        ax.set_ylabel("instances")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom for the legend
        ax.legend(fontsize=7, loc="upper center")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_clicks(ev: Evaluation, path: Path) -> Path:
    """Mean IoU after each click, per SAM2 model, with the NoC targets drawn in."""
    colors = _model_colors(ev)
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    s = ev.settings
    for m in ev.by_family("sam2"):
        if not m.clicks or not m.clicks["miou_per_click"]:
            continue
        y = m.clicks["miou_per_click"]
        x = np.arange(1, len(y) + 1)
        nocs = ", ".join(
            f"NoC@{round(t * 100)} {m.clicks[f'NoC@{round(t * 100)}']:.2f}"
            for t in s.noc_thresholds
        )
        ax.plot(x, y, marker="o", ms=3.5, color=colors[m.label], label=f"{m.label} ({nocs})")
    for t in s.noc_thresholds:
        ax.axhline(t, color="gray", ls="--", lw=0.8)
        ax.annotate(
            f"NoC target {t:.2f}",
            (1, t),
            xytext=(0, 2),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=7,
            color="gray",
        )
    ax.set_xlabel("clicks")
    ax.set_ylabel("mean IoU over instances")
    ax.set_xticks(np.arange(1, s.max_clicks + 1))
    ax.set_ylim(0, 1.02)
    ax.set_title("SAM2 clicks-to-IoU (corrective clicks from the error region)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# =============================================================================================
# Overlay grid
# =============================================================================================


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


def overlay_grid(ev: Evaluation, ds: Any, path: Path, k: int = 3) -> Path | None:
    """Rows: the best and worst images; columns: ground truth, then each model's prediction.

    SAM2 columns show the single-centre-point protocol (the click drawn as a dot), SAM3
    columns the kept predictions from text. Instance colours follow the ground-truth panel
    (SAM2: the mask answering instance k's prompt; SAM3: the instance a prediction was
    Hungarian-matched to); SAM3 predictions matching nothing are white.
    """
    shown: list[tuple[ModelEvaluation, str]] = []
    for m in ev.models:
        if m.family == "sam2":
            proto = "point" if "point" in m.records else next(iter(m.records), None)
        else:
            proto = "text"
        if proto is not None and m.records.get(proto):
            shown.append((m, proto))
    picks = select_best_worst(ev, shown, k)
    if not picks:
        return None
    n_rows, n_cols = len(picks), len(shown) + 1
    first = ds[ev.image_indices[picks[0][1]]]
    aspect = first["width"] / first["height"]
    panel_h = 2.6
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(panel_h * aspect * n_cols + 0.6, panel_h * n_rows + 0.6),
        squeeze=False,
    )
    by_image = {
        (m.label, proto): {r["image_id"]: r for r in m.records[proto]} for m, proto in shown
    }
    for r, (tag, iid, score) in enumerate(picks):
        row = ds[ev.image_indices[iid]]
        img = np.asarray(row["image"].convert("RGB"))
        h, w = img.shape[:2]
        scale = _panel_scale(h, w)
        small = _resize_image(img, scale)
        gt = _gt_masks(row)
        gt_rles = [rle.encode(m)["counts"] for m in gt]
        palette = instance_colors(max(len(gt), 1))
        ax = axes[r, 0]
        ax.imshow(overlay_masks(small, _resize_masks(gt, scale)), interpolation="nearest")
        ax.set_ylabel(f"{tag}: image {iid}\nmean IoU {score:.2f}", fontsize=8)
        ax.text(
            0.01,
            0.01,
            f"{len(gt)} instances",
            transform=ax.transAxes,
            fontsize=7,
            color="white",
            va="bottom",
            ha="left",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "edgecolor": "none"},
        )
        if r == 0:
            ax.set_title("ground truth", fontsize=9)
        for c, (m, proto) in enumerate(shown, start=1):
            ax = axes[r, c]
            rec = by_image[(m.label, proto)].get(iid)
            value = m.per_image_iou[proto].get(iid)
            if m.family == "sam2" and rec is not None:
                pred = rle.decode_many(rec["pred"], h, w)
                colors = palette[: len(pred)]
                ax.imshow(
                    overlay_masks(small, _resize_masks(pred, scale), color=colors),
                    interpolation="nearest",
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
                info = f"IoU {value:.2f}" if value is not None else ""
            elif rec is not None:
                pred, colors, n_fp = _sam3_panel(rec, gt_rles, len(gt))
                if pred.shape[0]:
                    panel = overlay_masks(small, _resize_masks(pred, scale), color=colors)
                else:
                    panel = small
                ax.imshow(panel, interpolation="nearest")
                info = (f"matched IoU {value:.2f}" if value is not None else "") + (
                    f", {pred.shape[0]} kept, {n_fp} unmatched"
                )
            else:
                ax.imshow(small)
                info = "no prediction"
            ax.text(
                0.01,
                0.01,
                info,
                transform=ax.transAxes,
                fontsize=7,
                color="white",
                va="bottom",
                ha="left",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "edgecolor": "none"},
            )
            if r == 0:
                ax.set_title(f"{m.label} ({_short_prompt(proto)})", fontsize=9)
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
    plt.close(fig)
    return path


# =============================================================================================
# Everything at once
# =============================================================================================


def write_report(ev: Evaluation, ds: Any, out_dir: str | Path) -> list[Path]:
    """Write every artefact of an evaluation into ``out_dir``; returns the files written.

    ``ds`` is the evaluated (selected) split, used for the images of the overlay grid.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    written += write_records(ev, out / "records")
    written.append(plot_metric_bars(ev, out / "metric_bars.png"))
    written.append(plot_iou_histograms(ev, out / "iou_histograms.png"))
    if any(m.clicks for m in ev.models):
        written.append(plot_clicks(ev, out / "clicks_to_iou.png"))
    if ev.by_family("sam2") and ev.by_family("sam3"):
        written.append(plot_gap(ev, out / "sam2_vs_sam3.png"))
    grid = overlay_grid(ev, ds, out / "overlays_best_worst.png")
    if grid is not None:
        written.append(grid)
    names = [p.relative_to(out).as_posix() for p in written]
    doc = ev.to_json()
    doc["artefacts"] = names + ["report.md", "report.json", "report.csv"]
    (out / "report.json").write_text(json.dumps(doc, indent=2))
    write_csv(ev, out / "report.csv")
    (out / "report.md").write_text(markdown(ev, names))
    written += [out / "report.json", out / "report.csv", out / "report.md"]
    return written


# =============================================================================================
# Training curves of a run
# =============================================================================================

_LOG_STEP = re.compile(r"\bstep (\d+) (.*)$")
_LOG_EVAL = re.compile(r"\b(?:Eval at step (\d+)|(Initial) eval|(Final) eval): (.*)$")
_KV = re.compile(r"([\w/@.\-]+)=(\S+)")


def _parse_kv(text: str) -> dict[str, float]:
    out = {}
    for k, v in _KV.findall(text):
        try:
            out[k] = float(v)
        except ValueError:
            continue
    return out


def parse_training_log(path: str | Path) -> dict[str, Any]:
    """``training.log`` -> ``{"train": {step: {key: value}}, "eval": {step: {...}}}``.

    Reads the trainer's lines ``step N train/loss=... train/lr=...`` and ``Eval at step N:
    k=v ...`` (``Initial eval`` is step 0; ``Final eval`` the last training step). A resumed
    run appends to the same log, so a later line for a step replaces an earlier one.
    """
    train: dict[int, dict[str, float]] = {}
    evals: dict[int, dict[str, float]] = {}
    final: dict[str, float] | None = None
    last_step = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        m = _LOG_EVAL.search(line)
        if m:
            values = _parse_kv(m.group(4))
            if m.group(2):
                evals[0] = values
            elif m.group(3):
                final = values
            else:
                evals[int(m.group(1))] = values
            continue
        m = _LOG_STEP.search(line)
        if m and "=" in m.group(2):
            step = int(m.group(1))
            train[step] = _parse_kv(m.group(2))
            last_step = max(last_step, step)
    if final is not None:
        evals.setdefault(max([last_step, *evals]) if evals or last_step else 0, final)
    return {"train": dict(sorted(train.items())), "eval": dict(sorted(evals.items()))}


#: Evaluation metrics drawn by :func:`plot_run`, in this order, when the log has them.
SAM2_RUN_METRICS = ("mean_iou", "mean_dice", "mean_boundary_f1", "iou_at_50")
SAM3_RUN_METRICS = (
    "cgF1",
    "pmF1",
    "IL_MCC",
    "concept_recall",
    "grounding_accuracy",
    "attribute_accuracy",
    "mask_AP",
    "mean_iou",
)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """``loss_curves.png`` (total and per-term training loss, learning rate) and
    ``eval_curves.png`` (validation metrics per evaluation, best step marked) of a run."""
    run = Path(run_dir)
    log = run / "training.log"
    if not log.is_file():
        raise FileNotFoundError(f"{log} does not exist; is {run} a sam_hf output_dir?")
    out = Path(out_dir) if out_dir is not None else run
    out.mkdir(parents=True, exist_ok=True)
    parsed = parse_training_log(log)
    results = {}
    if (run / "eval_results.json").is_file():
        results = json.loads((run / "eval_results.json").read_text())
    written = []
    train = parsed["train"]
    if train:
        steps = np.array(list(train))
        fig, (ax, ax_lr) = plt.subplots(
            2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
        keys = sorted({k for v in train.values() for k in v if k.startswith("train/loss")})
        for k in keys:
            y = np.array([train[s].get(k, np.nan) for s in steps])
            lw, alpha = (2.0, 1.0) if k == "train/loss" else (1.0, 0.8)
            ax.plot(steps, y, lw=lw, alpha=alpha, label=k.removeprefix("train/"))
        positive = all(
            v > 0
            for s in steps
            for k in keys
            if math.isfinite(train[s].get(k, np.nan))
            for v in [train[s][k]]
        )
        if positive and keys:
            ax.set_yscale("log")
        ax.set_ylabel("training loss (logged steps)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"{run.name}: training loss", fontsize=10)
        lr = np.array([train[s].get("train/lr", np.nan) for s in steps])
        ax_lr.plot(steps, lr, color="gray")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_xlabel("optimizer step")
        ax_lr.grid(alpha=0.3)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        fig.tight_layout()
        p = out / "loss_curves.png"
        fig.savefig(p, dpi=130)
        plt.close(fig)
        written.append(p)
    evals = parsed["eval"]
    sam3 = any("cgF1" in v for v in evals.values())
    keys = [
        k
        for k in (SAM3_RUN_METRICS if sam3 else SAM2_RUN_METRICS)
        if any(k in v for v in evals.values())
    ]
    if evals and keys:
        cols = 2 if len(keys) == 4 else min(len(keys), 3)
        rows_n = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 2.9 * rows_n), squeeze=False)
        steps = np.array(list(evals))
        best = results.get("best", {}) or {}
        for ax, k in zip(axes.flat, keys):
            y = np.array([evals[s].get(k, np.nan) for s in steps])
            ax.plot(steps, y, marker="o", ms=3)
            finite = y[np.isfinite(y)]
            if finite.size and finite.min() >= 0:
                # scores in [0, 1]: keep 0 in view so a flat line reads as "no change at 0"
                ax.set_ylim(0, max(0.05, float(finite.max()) * 1.1))
            if best.get("step") is not None and k in best:
                ax.axvline(best["step"], color="tab:green", ls="--", lw=0.8)
                ax.annotate(
                    f"best ({k})",
                    (best["step"], 1.0),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    color="tab:green",
                    xytext=(3, -10),
                    textcoords="offset points",
                )
            title = "matched instance IoU" if (sam3 and k == "mean_iou") else METRIC_NAMES.get(k, k)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("optimizer step", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys) :]:
            ax.axis("off")
        fig.suptitle(f"{run.name}: validation metrics (step 0 = before training)", fontsize=10)
        fig.tight_layout()
        p = out / "eval_curves.png"
        fig.savefig(p, dpi=130)
        plt.close(fig)
        written.append(p)
    if not written:
        raise ValueError(f"{log} holds no 'step N ...' or 'Eval at step N: ...' lines to plot.")
    return written
