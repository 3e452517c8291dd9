"""What a run leaves for its users besides checkpoints: model folders and results files.

``final/`` and ``best/`` are plain transformers folders (the task's ``save_pretrained``) with
the run's ``training_config.yaml``, their own ``eval_results.json`` and a ``README.md`` model
card (:func:`sam_hf.hub.cards.make_model_card`, also without a push), each written into a
temporary folder and swapped in (:func:`sam_hf.training.files.write_folder`).

The results files are those of transformers' example scripts (``Trainer.save_metrics``), with
flat keys: ``eval_results.json`` holds the final evaluation (``eval_mean_iou``, ...,
``epoch``) and the before/after view as extra keys: ``initial_eval_<metric>`` (before
fine-tuning, with ``eval_on_start``), ``best_eval_<metric>`` with ``best_global_step`` and
``metric_for_best_model``; ``train_results.json`` the run's own numbers (``train_loss``,
``train_runtime``, ``train_samples_per_second``, ``global_step``, counters);
``all_results.json`` both.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from sam_hf.config import save_config
from sam_hf.hub.cards import make_model_card
from sam_hf.training.files import write_folder, write_json
from sam_hf.training.state import TrainerState, prefixed
from sam_hf.training.task import Task

EVAL_RESULTS = "eval_results.json"
TRAIN_RESULTS = "train_results.json"
ALL_RESULTS = "all_results.json"


def folder_results(
    state: TrainerState, metrics: dict, initial: dict | None, metric: str, num_processes: int
) -> dict[str, Any]:
    """A model folder's ``eval_results.json``: :func:`eval_results` for its weights'
    ``metrics``, with the step and the number of processes; its card is built from it."""
    return {
        **eval_results(state, metrics, initial, metric),
        "global_step": state.global_step,
        "num_processes": num_processes,
    }


def write_card(folder: Path, cfg: Any, family: str, results: dict) -> None:
    """``folder/README.md``: the run's model card (what a push would upload with it)."""
    make_model_card(cfg.output_dir, cfg, results, family).save(folder / "README.md")


def _write_model(
    tmp: Path,
    task: Task,
    module: torch.nn.Module,
    processor: Any,
    cfg: Any,
    results: dict | None,
) -> None:
    task.save_pretrained(module, processor, tmp, cfg)
    save_config(cfg, tmp / "training_config.yaml")
    if results is not None:
        write_json(tmp / EVAL_RESULTS, results)
        write_card(tmp, cfg, task.family, results)


def export_model(
    task: Task,
    accelerator: Accelerator,
    module: torch.nn.Module,
    processor: Any,
    cfg: Any,
    target: Path,
    results: dict | None,
) -> None:
    """Write ``target`` (``final/``, ``best/``) as a plain-transformers folder with the run's
    config and, given ``results`` (:func:`folder_results`), its ``eval_results.json`` and model
    card. Atomic; out of disk space: a DiskFullError naming the folder. Main process only."""
    inner = accelerator.unwrap_model(module)
    write = functools.partial(
        _write_model, task=task, module=inner, processor=processor, cfg=cfg, results=results
    )
    write_folder(target, f"the {target.name}/ model", write)


def copy_model(source: Path, target: Path) -> None:
    """``target`` as a copy of the model folder ``source`` (``load_best_model_at_end``: the
    best evaluated weights become ``final/``), atomically like :func:`export_model`."""
    copy = functools.partial(shutil.copytree, source, dirs_exist_ok=True)
    write_folder(target, f"the {target.name}/ model", copy)


def save_results(output_dir: Path, eval_results: dict, train_results: dict) -> dict:
    """``eval_results.json``, ``train_results.json`` and ``all_results.json`` (both merged),
    as transformers' ``Trainer.save_metrics`` writes them; returns the merged dict."""
    all_results = {**eval_results, **train_results}
    write_json(output_dir / EVAL_RESULTS, eval_results)
    write_json(output_dir / TRAIN_RESULTS, train_results)
    write_json(output_dir / ALL_RESULTS, all_results)
    return all_results


def eval_results(
    state: TrainerState, final: dict, initial: dict | None, metric: str
) -> dict[str, Any]:
    """``eval_results.json``: the final evaluation (``eval_<metric>``, ``epoch``), and the
    before/after view: ``initial_eval_<metric>`` (before fine-tuning), ``best_eval_<metric>``,
    ``best_global_step`` and ``metric_for_best_model`` (the ``eval_`` name that chose it)."""
    results = {"epoch": state.epoch, **prefixed("eval", final)}
    if initial is not None:
        results.update(prefixed("initial_eval", initial))
    best = state.eval_at(state.best_global_step) if state.best_global_step is not None else None
    if best is not None:
        results.update(prefixed("best_eval", best))
        results["best_global_step"] = state.best_global_step
    results["metric_for_best_model"] = f"eval_{metric}"
    return results


def train_results(
    state: TrainerState, speed: dict[str, float], num_train: int, num_processes: int
) -> dict[str, Any]:
    """``train_results.json``: transformers' train metrics (``train_loss`` and the speed of
    this process's part of the run, :meth:`Throughput.totals`), ``train_samples``, and the
    run's counters: ``global_step``, ``num_processes``, ``train_nonfinite_steps`` (optimizer
    steps voided by a non-finite loss) and the collators' ``train_num_*`` sums."""
    return {
        "epoch": state.epoch,
        **speed,
        "train_samples": num_train,
        "global_step": state.global_step,
        "num_processes": num_processes,
        "train_nonfinite_steps": state.nonfinite_total,
        **prefixed("train", state.data_counters),
    }
