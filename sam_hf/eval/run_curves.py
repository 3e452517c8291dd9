"""Training curves of a run, drawn from its ``trainer_state.json`` (the HF Trainer's schema).

The run folder's ``trainer_state.json`` holds ``log_history``, a list of dicts in the order
they were logged: training entries carry ``step``, ``epoch``, ``loss``, ``learning_rate``,
optionally ``grad_norm`` and per-term losses (``loss_focal``, ``loss_dice`` ...); evaluation
entries carry ``step``, ``epoch`` and flat ``eval_<metric>`` keys (``eval_mean_iou``). This
schema is what transformers' ``Trainer`` writes, so the same curves come out of any run that
follows it. :func:`plot_run` writes ``loss_curves.png`` and ``eval_curves.png``; the best step
(``best_global_step``, with ``eval_results.json``'s ``metric_for_best_model``) is marked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sam_hf.eval.names import metric_name
from sam_hf.eval.plots import save_figure

#: The file a run keeps its log history in (transformers' ``TRAINER_STATE_NAME``).
TRAINER_STATE = "trainer_state.json"
#: Evaluation metrics drawn by :func:`plot_run`, in this order, when the history has them.
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
#: Keys of a log entry that say when or how fast, not how well (transformers' speed_metrics).
_BOOKKEEPING = ("step", "epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """``trainer_state.json`` as a dict; a file that is not one is a ValueError saying so."""
    try:
        state = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(state, dict) or not isinstance(state.get("log_history", []), list):
        raise ValueError(f"{path} holds no 'log_history' list (the HF trainer_state.json schema).")
    return state


def log_history(state: dict[str, Any]) -> dict[str, dict[int, dict[str, float]]]:
    """``{"train": {step: {key: value}}, "eval": {step: {metric: value}}}`` of a trainer state.

    A training entry is one with ``loss`` (its numbers but ``step`` / ``epoch``); an evaluation
    entry one with ``eval_<metric>`` keys, kept without the prefix (timings such as
    ``eval_runtime`` are dropped). Entries without a step
    (or the end-of-training summary with ``train_loss``) are skipped, and a later entry for a
    step updates an earlier one. Both are sorted by step.
    """
    train: dict[int, dict[str, float]] = {}
    evals: dict[int, dict[str, float]] = {}
    for entry in state.get("log_history", []):
        if not isinstance(entry, dict) or not _is_number(entry.get("step")):
            continue
        step = int(entry["step"])
        numbers = {k: float(v) for k, v in entry.items() if k not in _BOOKKEEPING and _is_number(v)}
        metrics = {k.removeprefix("eval_"): v for k, v in numbers.items() if k.startswith("eval_")}
        if metrics:
            evals.setdefault(step, {}).update(metrics)
        if "loss" in numbers:
            train.setdefault(step, {}).update(
                {k: v for k, v in numbers.items() if not k.startswith("eval_")}
            )
    return {"train": dict(sorted(train.items())), "eval": dict(sorted(evals.items()))}


def _best(run: Path, state: dict[str, Any]) -> tuple[int | None, str | None]:
    """The best step and the metric that chose it, where the run says (None when it doesn't)."""
    results: dict[str, Any] = {}
    path = run / "eval_results.json"
    if path.is_file():
        results = json.loads(path.read_text()) or {}
    step = state.get("best_global_step")
    step = results.get("best_global_step") if step is None else step
    metric = results.get("metric_for_best_model")
    metric = metric.removeprefix("eval_") if isinstance(metric, str) else None
    return (int(step) if _is_number(step) else None), metric


def _plot_losses(name: str, train: dict[int, dict[str, float]], path: Path) -> Path:
    """Total and per-term training loss (log scale when all positive), learning rate, and
    the gradient norm when it was logged."""
    steps = np.array(list(train))
    keys = sorted({k for v in train.values() for k in v if k == "loss" or k.startswith("loss_")})
    lower = [k for k in ("learning_rate", "grad_norm") if any(k in v for v in train.values())]
    fig = Figure(figsize=(7, 4.0 + 1.5 * len(lower)))
    axes = fig.subplots(1 + len(lower), 1, sharex=True, height_ratios=[3] + [1] * len(lower))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    values = {k: np.array([train[s].get(k, np.nan) for s in steps]) for k in keys}
    marker = "o" if len(steps) <= 50 else None  # a point between two gaps stays visible
    for k, y in values.items():
        lw, alpha = (2.0, 1.0) if k == "loss" else (1.0, 0.8)
        ax.plot(steps, y, lw=lw, alpha=alpha, label=k, marker=marker, ms=2.5)
    finite = np.concatenate([y[np.isfinite(y)] for y in values.values()] or [np.zeros(0)])
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    bad = steps[~np.isfinite(values["loss"])] if "loss" in values else steps[:0]
    if bad.size:  # steps whose loss was NaN/inf: the gaps in the line, marked at the bottom
        ax.scatter(
            bad,
            np.zeros(bad.size),
            marker="x",
            color="tab:red",
            zorder=3,
            clip_on=False,
            transform=ax.get_xaxis_transform(),
            label="non-finite loss",
        )
    ax.set_ylabel("training loss (logged steps)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{name}: training loss", fontsize=10)
    for ax, k in zip(axes[1:], lower):
        ax.plot(steps, [train[s].get(k, np.nan) for s in steps], color="gray")
        ax.set_ylabel("learning rate" if k == "learning_rate" else "grad norm", fontsize=8)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[-1].set_xlabel("optimizer step")
    return save_figure(fig, path)


def _mark_best(ax: Axes, step: int, label: str, right_half: bool) -> None:
    """A dashed line at the best step, labelled on the side that has room."""
    ax.axvline(step, color="tab:green", ls="--", lw=0.8)
    ax.annotate(
        label,
        (step, 1.0),
        xycoords=("data", "axes fraction"),
        fontsize=7,
        color="tab:green",
        xytext=(-3 if right_half else 3, -10),
        textcoords="offset points",
        ha="right" if right_half else "left",
    )


def _plot_evals(
    name: str, evals: dict[int, dict[str, float]], best: tuple[int | None, str | None], path: Path
) -> Path | None:
    """One panel per validation metric over the evaluations; None when there is none."""
    sam3 = any("cgF1" in v for v in evals.values())
    metrics = SAM3_RUN_METRICS if sam3 else SAM2_RUN_METRICS
    keys = [k for k in metrics if any(k in v for v in evals.values())]
    if not keys:
        return None
    cols = 2 if len(keys) == 4 else min(len(keys), 3)
    rows_n = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.2 * cols, 2.9 * rows_n))
    axes = fig.subplots(rows_n, cols, squeeze=False)
    steps = np.array(list(evals))
    best_step, best_metric = best
    for ax, k in zip(axes.flat, keys):
        y = np.array([evals[s].get(k, np.nan) for s in steps])
        ax.plot(steps, y, marker="o", ms=3)
        finite = y[np.isfinite(y)]
        if finite.size and finite.min() >= 0:
            # scores in [0, 1]: keep 0 in view so a flat line reads as "no change at 0"
            ax.set_ylim(0, max(0.05, float(finite.max()) * 1.1))
        if best_step is not None and best_metric in (None, k):
            label = f"best ({k})" if best_metric else "best step"
            _mark_best(ax, best_step, label, best_step > (steps.min() + steps.max()) / 2)
        title = "matched instance IoU" if sam3 and k == "mean_iou" else metric_name(k)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"{name}: validation metrics (step 0 = before training)", fontsize=10)
    return save_figure(fig, path)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """``loss_curves.png`` (total and per-term training loss, learning rate, grad norm) and
    ``eval_curves.png`` (validation metrics per evaluation, best step marked) of a run,
    from its ``trainer_state.json``; written into ``out_dir`` (default: the run folder)."""
    run = Path(run_dir)
    path = run / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {run} a sam_hf output_dir?")
    state = read_trainer_state(path)
    history = log_history(state)
    out = Path(out_dir) if out_dir is not None else run
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if history["train"]:
        written.append(_plot_losses(run.name, history["train"], out / "loss_curves.png"))
    evals = _plot_evals(run.name, history["eval"], _best(run, state), out / "eval_curves.png")
    if evals is not None:
        written.append(evals)
    if not written:
        raise ValueError(
            f"{path}: log_history holds no training entry (with 'loss') and no evaluation "
            "entry (with eval_<metric> keys) to plot."
        )
    return written
