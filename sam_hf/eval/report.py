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

from sam_hf.config.validate import GEOMETRIC_FAMILIES, family_name
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
from sam_hf.eval.plots import (
    plot_clicks,
    plot_gap,
    plot_iou_histograms,
    plot_metric_bars,
    plot_prompt_gap,
)


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
                family_name(m.family),
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
    present = [family_name(f) for f in (*GEOMETRIC_FAMILIES, "sam3") if ev.by_family(f)]
    told = " and ".join(family_name(f) for f in GEOMETRIC_FAMILIES if ev.by_family(f))
    lines = [
        "",
        f"## {' vs '.join(present)} (read with the prompts in mind)",
        "",
        f"{told} {'are' if ' and ' in told else 'is'} told *where* each object is (a prompt "
        "taken from that instance's ground truth; the same prompts for both when both are "
        "evaluated); SAM3 is only told *what* to look for (the noun phrase) and must find "
        "every instance itself, and say 'none here' for negative phrases. The columns below "
        "mean the same for all: per ground-truth instance, the IoU for its own prompt vs "
        "SAM3's IoU of the prediction Hungarian-matched to it (0 when nothing was found); "
        "recall = instances reached with IoU >= 0.5 (concept recall: per phrase, then "
        "averaged over phrases; instance recall: pooled).",
        "",
    ]
    rows = [
        [r["model"], family_name(r["family"]), r["prompt"]]
        + [r.get(k) for k in COMMON]
        + [r.get("num_instances")]
        for r in ev.gap_rows()
    ]
    return lines + _md_table(
        ["model", "family", "prompt given"] + [METRIC_NAMES[k] for k in COMMON] + ["instances"],
        rows,
    )


#: Below this many images the report warns that the bootstrap interval is not worth much.
FEW_IMAGES = 10


def _prompt_gap_section(ev: Evaluation) -> list[str]:
    """SAM3 tracker minus SAM2 per prompt and metric, with the bootstrap interval."""
    gaps = ev.prompt_gaps()
    if not gaps:
        return []
    lines = [
        "",
        "## Equal-prompt gap: SAM3 tracker minus SAM2",
        "",
        "The SAM3 tracker is SAM2's prompt encoder and mask decoder on SAM3's backbone. Both "
        "were given the very same prompts -- drawn per object in original-image pixels, "
        "whatever each model's input size, and checked identical for every object before "
        "subtracting -- so the gap is what the other model (chiefly its backbone) changes. "
        "gap = SAM3 tracker minus SAM2 (positive: the tracker is better); 95% CI = paired "
        f"percentile bootstrap over images: {gaps[0]['resamples']} resamples (numpy seed "
        f"{gaps[0]['seed']}) of the evaluated images with replacement, the same images for "
        "both models in each, instance means recomputed; the interval is the 2.5th-97.5th "
        "percentile of the resampled gaps. The clicks protocol is left out: after the first "
        "click, each model's clicks follow its own errors.",
        "",
    ]
    for g in gaps:
        lines += [f"### `{g['sam3_tracker']}` minus `{g['sam2']}`", ""]
        rows = []
        for proto in sorted(g["protocols"], key=protocol_order):
            for k, r in g["protocols"][proto].items():
                ci = f"[{_signed(r['ci_low'])}, {_signed(r['ci_high'])}]"
                rows.append(
                    [ev.settings.prompt_label(proto), METRIC_NAMES[k], r["sam2"]]
                    + [r["sam3_tracker"], _signed(r["gap"]), ci, r["num_images"]]
                )
        header = ["prompt (same for both)", "metric", g["sam2"], g["sam3_tracker"], "gap"]
        lines += _md_table(header + ["95% CI", "images"], rows) + [""]
    n = min((r[-1] for r in rows), default=0)
    if n < FEW_IMAGES:
        lines.append(
            f"Only {n} images: an interval resampled from so few says little about new images."
        )
    return lines


def _sam2_section(ev: Evaluation, sam2: list[ModelEvaluation], family: str) -> list[str]:
    """A point/box family's table (SAM2 or SAM3 tracker): every prompt protocol, then clicks."""
    s = ev.settings
    lines = [
        "",
        f"## {family_name(family)}: prompted segmentation (prompts from the ground truth)",
        "",
        "Per-instance means over every annotated instance (DAVIS conventions: IoU, Dice, "
        "Boundary F1 at tolerance 0.008 of the diagonal); each prompt type is its own run. "
        "Prompts are drawn per object in original-image pixels, so every point/box model "
        "gets the same ones.",
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
        lines += [f"### {family_name(fam)}: `{base.source.source}` -> `{tuned.source.source}`", ""]
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
    geometric = [f for f in GEOMETRIC_FAMILIES if ev.by_family(f)]
    sam3 = ev.by_family("sam3")
    lines = _intro(ev)
    if geometric and sam3:
        lines += _gap_section(ev)
    lines += _prompt_gap_section(ev)
    for fam in geometric:
        lines += _sam2_section(ev, ev.by_family(fam), fam)
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


def _gap_csv_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """The equal-prompt gaps in report.csv's long format (``gap``, ``ci_low``, ``ci_high``)."""
    rows = []
    for g in ev.prompt_gaps():
        base = {
            "model": f"{g['sam3_tracker']} - {g['sam2']}",
            "family": "sam3_tracker - sam2",
            "role": f"equal-prompt gap ({g['resamples']} bootstrap resamples, seed {g['seed']})",
            "source": "",
        }
        for proto, per in g["protocols"].items():
            prompt = ev.settings.prompt_label(proto)
            for k, r in per.items():
                for part in ("gap", "ci_low", "ci_high"):
                    metric = k if part == "gap" else f"{k}/{part}"
                    rows.append(
                        {**base, "protocol": proto, "prompt": prompt, "metric": metric}
                        | {"value": r[part]}
                    )
    return rows


def csv_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """Long format: one row per (model, protocol, metric), with the prompt the model was
    given; then the equal-prompt gaps (SAM3 tracker minus SAM2) and their intervals."""
    rows = []
    label = ev.settings.prompt_label
    for m in ev.models:
        base = {"model": m.label, "family": m.family, "role": m.role, "source": m.source.source}
        for proto, met in m.metrics.items():
            at = {**base, "protocol": proto, "prompt": label(proto)}
            for k, v in met.items():
                rows.append({**at, "metric": k, "value": v})
            for k, v in m.common.get(proto, {}).items():
                rows.append({**at, "metric": f"common/{k}", "value": v})
        at = {**base, "protocol": "clicks", "prompt": label("clicks")}
        for k, v in (m.clicks or {}).items():
            if k == "miou_per_click":
                rows += [{**at, "metric": f"mIoU@{i}", "value": x} for i, x in enumerate(v, 1)]
            else:
                rows.append({**at, "metric": k, "value": v})
    rows += _gap_csv_rows(ev)
    for r in rows:
        v = r["value"]
        if isinstance(v, float) and not math.isfinite(v):
            r["value"] = ""
    return rows


#: Columns of report.csv.
CSV_COLUMNS = ["model", "family", "role", "source", "protocol", "prompt", "metric", "value"]


def write_csv(ev: Evaluation, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS)
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
    if any(ev.by_family(f) for f in GEOMETRIC_FAMILIES) and ev.by_family("sam3"):
        written.append(plot_gap(ev, out / "sam2_vs_sam3.png"))
    if ev.prompt_gaps():
        written.append(plot_prompt_gap(ev, out / "equal_prompt_gap.png"))
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
