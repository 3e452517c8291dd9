"""Charts of an evaluation: metric bars, the SAM2-vs-SAM3 gap, the equal-prompt gap (SAM3
tracker minus SAM2, with bootstrap intervals), IoU histograms, clicks.

Colour says which model and hatching which prompt, and every bar carries its value, so a
chart reads without the tables. Figures are drawn on :class:`matplotlib.figure.Figure`
directly (no pyplot state, no display, no global backend switch) and saved as PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from sam_hf.config.validate import GEOMETRIC_FAMILIES, family_name
from sam_hf.eval.compare import Evaluation
from sam_hf.eval.names import (
    COMMON,
    METRIC_NAMES,
    SAM2_TABLE,
    SAM3_BARS,
    metric_name,
    protocol_order,
)

#: Panel order of the metric bars: the point/box families, then SAM3.
_PANELS = (*GEOMETRIC_FAMILIES, "sam3")


def save_figure(fig: Figure, path: Path, dpi: int = 130) -> Path:
    """Lay ``fig`` out tightly and write it to ``path`` as PNG."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def _model_colors(ev: Evaluation) -> dict[str, Any]:
    cmap = matplotlib.colormaps["tab10"]
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
        with matplotlib.rc_context({"hatch.linewidth": 1.3}):
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
    """Per-family metric bars: SAM2 / SAM3 tracker per model and prompt, SAM3 per model."""
    colors = _model_colors(ev)
    panels = [f for f in _PANELS if ev.by_family(f)]
    fig = Figure(figsize=(6.5 * len(panels), 5.0))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, fam in zip(axes[0], panels):
        series = []
        if fam in GEOMETRIC_FAMILIES:
            groups = [METRIC_NAMES[k] for k in SAM2_TABLE]
            for m in ev.by_family(fam):
                for proto in sorted(m.metrics, key=protocol_order):
                    series.append(
                        (
                            f"{m.label} · {proto}",
                            [m.metrics[proto].get(k) for k in SAM2_TABLE],
                            colors[m.label],
                            _hatch(proto),
                        )
                    )
            ax.set_title(f"{family_name(fam)}, prompts from ground truth")
        else:
            groups = [metric_name(k, "sam3") for k in SAM3_BARS]
            for m in ev.by_family(fam):
                series.append(
                    (m.label, [m.metrics["text"].get(k) for k in SAM3_BARS], colors[m.label], "")
                )
            ax.set_title("SAM3, text prompts only")
        _bar_group(ax, groups, series)
        ax.legend(
            fontsize=7,
            ncol=2 if fam in GEOMETRIC_FAMILIES else 4,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            frameon=False,
        )
        ax.tick_params(axis="x", labelrotation=15)
    return save_figure(fig, path)


def plot_gap(ev: Evaluation, path: Path) -> Path:
    """The common metrics side by side for every model and protocol (SAM2 vs SAM3)."""
    colors = _model_colors(ev)
    rows = ev.gap_rows()
    fig = Figure(figsize=(max(6.5, 1.6 * len(rows) + 3), 4.2))
    ax = fig.subplots()
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
    told = " / ".join(family_name(f) for f in GEOMETRIC_FAMILIES if ev.by_family(f))
    ax.set_title(f"Same instances, different prompts: {told} (geometry from GT) vs SAM3 (text)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    return save_figure(fig, path)


def plot_iou_histograms(ev: Evaluation, path: Path) -> Path:
    """Per-instance IoU distributions: one panel per model, one line per protocol."""
    n = len(ev.models)
    cols = min(n, 2)
    rows_n = math.ceil(n / cols)
    fig = Figure(figsize=(5.2 * cols, 3.3 * rows_n))
    axes = fig.subplots(rows_n, cols, squeeze=False)
    bins = np.linspace(0.0, 1.0, 21)
    for ax, m in zip(axes.flat, ev.models):
        for proto in sorted(m.instance_ious, key=protocol_order):
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
        ax.set_title(f"{m.label} ({family_name(m.family)}, {m.role})", fontsize=9)
        ax.set_xlabel("IoU per ground-truth instance")
        ax.set_ylabel("instances")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom for the legend
        ax.legend(fontsize=7, loc="upper center")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return save_figure(fig, path)


def plot_clicks(ev: Evaluation, path: Path) -> Path:
    """Mean IoU after each click, per SAM2 / SAM3 tracker model, with the NoC targets."""
    colors = _model_colors(ev)
    fig = Figure(figsize=(6.2, 4.0))
    ax = fig.subplots()
    s = ev.settings
    for m in (m for m in ev.models if m.family in GEOMETRIC_FAMILIES):
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
    ax.set_title("Clicks-to-IoU (corrective clicks from the error region)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def plot_prompt_gap(ev: Evaluation, path: Path) -> Path:
    """SAM3 tracker minus SAM2 on the same prompts: one dot per (prompt, metric) with its 95%
    paired bootstrap interval, one panel per compared pair; zero (no difference) marked."""
    gaps = ev.prompt_gaps()
    n_rows = max(sum(len(v) for v in g["protocols"].values()) for g in gaps)
    fig = Figure(figsize=(6.8 * len(gaps), 1.2 + 0.36 * n_rows))
    axes = fig.subplots(1, len(gaps), squeeze=False)[0]
    for ax, g in zip(axes, gaps):
        labels, y = [], 0
        for proto in sorted(g["protocols"], key=protocol_order):
            color = _by_protocol(_PROTO_COLORS, proto, "gray")
            for k, r in g["protocols"][proto].items():
                err = [[r["gap"] - r["ci_low"]], [r["ci_high"] - r["gap"]]]
                ax.errorbar(r["gap"], y, xerr=err, fmt="o", color=color, capsize=3, ms=4)
                ax.annotate(
                    f"{r['gap']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                    (1.0, y),
                    xycoords=("axes fraction", "data"),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                )
                labels.append(f"{proto} · {METRIC_NAMES[k]}")
                y += 1
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_xlabel(f"{g['sam3_tracker']} minus {g['sam2']} (positive: tracker better)")
        ax.grid(axis="x", alpha=0.3)
        n = next(iter(next(iter(g["protocols"].values())).values()))["num_images"]
        ax.set_title(
            f"Equal-prompt gap, 95% paired bootstrap CI over {n} images\n"
            f"({g['resamples']} resamples, seed {g['seed']})",
            fontsize=9,
        )
    return save_figure(fig, path)
