"""Writing an evaluation down: report.md, report.json, report.csv and the per-model records.

:func:`write_report` turns an :class:`sam_hf.eval.compare.Evaluation` into files a person reads
(``report.md`` with every table, the charts of :mod:`sam_hf.eval.plots`, the overlay grid of
:mod:`sam_hf.eval.overlay_grid`) and files a program reads (``report.json`` with every number,
``report.csv`` in long format, and ``records/<model>.json`` with the predictions as RLE, from
which every number can be recomputed).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam_hf.eval.compare import Evaluation, ModelEvaluation, jsonable
from sam_hf.eval.names import (
    COMMON,
    METRIC_NAMES,
    SAM2_TABLE,
    SAM3_TABLE,
    metric_name,
    protocol_order,
)
from sam_hf.eval.overlay_grid import overlay_grid
from sam_hf.eval.plots import plot_clicks, plot_gap, plot_iou_histograms, plot_metric_bars


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


# =============================================================================================
# report.md
# =============================================================================================


def _intro(ev: Evaluation) -> list[str]:
    """What was evaluated on which images, and the table of models."""
    s, d = ev.settings, ev.data
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
    return lines + _md_table(
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


def _gap_section(ev: Evaluation) -> list[str]:
    lines = [
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
    rows = [
        [r["model"], r["family"].upper(), r["prompt"]]
        + [r.get(k) for k in COMMON]
        + [r.get("num_instances")]
        for r in ev.gap_rows()
    ]
    return lines + _md_table(
        ["model", "family", "prompt given"] + [METRIC_NAMES[k] for k in COMMON] + ["instances"],
        rows,
    )


def _sam2_section(ev: Evaluation, sam2: list[ModelEvaluation]) -> list[str]:
    s = ev.settings
    lines = [
        "",
        "## SAM2: prompted segmentation (prompts from the ground truth)",
        "",
        "Per-instance means over every annotated instance (DAVIS conventions: IoU, Dice, "
        "Boundary F1 at tolerance 0.008 of the diagonal); each prompt type is its own run.",
        "",
    ]
    rows = []
    for m in sam2:
        for proto, met in sorted(m.metrics.items(), key=lambda kv: protocol_order(kv[0])):
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
    return lines + (_clicks_section(ev, clicked) if clicked else [])


def _clicks_section(ev: Evaluation, clicked: list[ModelEvaluation]) -> list[str]:
    s = ev.settings
    lines = [
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
    return lines + _md_table(header, rows)


def _sam3_section(ev: Evaluation, sam3: list[ModelEvaluation]) -> list[str]:
    s, d = ev.settings, ev.data
    lines = [
        "",
        "## SAM3: concept segmentation from text",
        "",
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
    return lines + _md_table(
        ["model", "role"] + [metric_name(k, "sam3") for k in SAM3_TABLE] + ["pairs"], rows
    )


def _comparison_section(ev: Evaluation) -> list[str]:
    """Per family: every table metric of the baseline, the fine-tune, and the change."""
    comparisons = ev.comparisons()
    if not comparisons:
        return []
    lines = ["", "## Baseline vs fine-tuned", ""]
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
                    change = _signed(dv, integer=k.startswith("NoF"))
                    name = metric_name(k, fam)
                    label = ev.settings.prompt_label(proto)
                    rows.append([label, name, before.get(k), after.get(k), change])
        lines += _md_table(["protocol", "metric", "baseline", "fine-tuned", "change"], rows)
        lines.append("")
        lines.append("(NoC and NoF: lower is better; every other metric: higher is better.)")
        lines.append("")
    return lines


def markdown(ev: Evaluation, artefacts: Sequence[str] = ()) -> str:
    """The human report: what was evaluated how, then one table per question."""
    sam2, sam3 = ev.by_family("sam2"), ev.by_family("sam3")
    lines = _intro(ev)
    if sam2 and sam3:
        lines += _gap_section(ev)
    if sam2:
        lines += _sam2_section(ev, sam2)
    if sam3:
        lines += _sam3_section(ev, sam3)
    lines += _comparison_section(ev)
    if ev.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in ev.notes]
    if artefacts:
        lines += ["", "## Files", ""]
        lines += [f"- `{a}`" for a in artefacts if not a.endswith(".png")] + [""]
        for a in artefacts:
            if a.endswith(".png"):
                lines += [f"![{a}]({a})", ""]
    return "\n".join(lines).rstrip() + "\n"


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
        p.write_text(json.dumps(jsonable(doc)))
        out.append(p)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


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
