"""One training run: what the stages of the loop share, and the stages as methods.

A :class:`Run` holds the model, data, optimizer, schedule and
:class:`~sam_hf.training.state.TrainerState` every stage needs, so the loop is explicit
methods instead of closures over one long function: set-up (:meth:`Run.setup`), the
evaluation before training, the epochs (one :func:`~sam_hf.training.step.training_step` per
micro-batch; after each optimizer step the logging, evaluation, checkpoint and stop rules of
:meth:`Run.after_step`), and the outputs (:meth:`Run.finish`).

Exact resume: the data order and every sample's randomness are seeded (see
:mod:`sam_hf.training.loaders`), so a checkpoint holds the ``save_state`` files and the state
(data position, counters, ``log_history``); resuming skips exactly the consumed micro-batches.
A step with a non-finite loss is voided, never applied; a full disk while saving is a
DiskFullError naming path and sizes; a failed Hub push never stops training
(:mod:`~sam_hf.training.hub_pushes`).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import signal
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from sam_hf.config import ConfigError, save_config, to_dict
from sam_hf.training import optim
from sam_hf.training.checkpointing import (
    checkpoint_name,
    load_checkpoint,
    register_lora_checkpointing,
    save_checkpoint,
)
from sam_hf.training.evaluation import evaluate, log_eval_images
from sam_hf.training.hub_pushes import HubPushes, warn_if_offline
from sam_hf.training.loaders import build_loaders, schedule_length
from sam_hf.training.outputs import (
    copy_model,
    eval_results,
    export_model,
    folder_results,
    save_results,
    train_results,
)
from sam_hf.training.reporting import (
    Throughput,
    before_after_table,
    fmt,
    init_trackers,
    log_metrics,
    report_voided_steps,
)
from sam_hf.training.signals import StopRequest, TrainingInterrupted
from sam_hf.training.state import TRAINER_STATE_NAME, TrainerState
from sam_hf.training.step import StepWindow, training_step
from sam_hf.training.task import Task

logger = logging.getLogger("sam_hf")


def every(cfg: Any, kind: str, step: int) -> bool:
    """Whether ``step`` is an ``eval``/``save`` step under ``<kind>_strategy: steps``."""
    n = getattr(cfg, f"{kind}_steps")
    return getattr(cfg, f"{kind}_strategy") == "steps" and bool(n) and step % n == 0


class Run:
    """One training run: what the stages of the loop share, and the stages as methods."""

    def __init__(
        self, cfg: Any, task: Task, accelerator: Accelerator, stop_request: StopRequest
    ) -> None:
        self.cfg, self.task, self.accelerator = cfg, task, accelerator
        self.stop_request = stop_request
        self.out_dir = Path(cfg.output_dir)
        self.metric = cfg.metric_for_best_model.removeprefix("eval_")
        self.state = TrainerState()
        self.pushes = HubPushes(accelerator, cfg, task.family)
        self.window = StepWindow()
        self.speed = Throughput()
        self.saved_at: tuple[tuple[int, int, int], Path] | None = None
        self.stop = False
        self.bar: Any = None

    def run(self, resume_path: Path | None) -> dict:
        """The whole run: set-up, the evaluation before training, the epochs, the outputs."""
        self.setup(resume_path)
        self.evaluate_on_start()
        self.train_epochs()
        return self.finish()

    # ------------------------------------------------------------------------- set-up

    def setup(self, resume_path: Path | None) -> None:
        """Config on disk, data, model, loaders, optimizer and schedule through
        ``accelerator.prepare``, the resumed state, the trackers."""
        cfg, acc = self.cfg, self.accelerator
        set_seed(cfg.seed)
        if acc.is_main_process:
            save_config(cfg, self.out_dir / "config.yaml")
        logger.info("Resolved config:\n%s", json.dumps(to_dict(cfg), indent=2, default=str))
        warn_if_offline(cfg)
        with acc.main_process_first():
            self.task.prepare_data(cfg)
        module, self.processor = self.task.build_model(cfg)  # init_from and LoRA inside
        self.train_ds, self.eval_ds = self.task.build_datasets(cfg, self.processor)
        train_dl, eval_dl = build_loaders(cfg, self.task, self.train_ds, self.eval_ds)
        optimizer = optim.build_optimizer(cfg, module)
        self.total_steps, self.num_train_epochs = schedule_length(
            cfg, len(self.train_ds), acc.num_processes
        )
        scheduler = optim.build_scheduler(cfg, optimizer, self.total_steps)
        self.module, self.optimizer, self.train_dl, self.eval_dl, self.scheduler = acc.prepare(
            module, optimizer, train_dl, eval_dl, scheduler
        )
        if cfg.use_lora:
            register_lora_checkpointing(acc)
        self.restore(resume_path)
        init_trackers(acc, cfg)

    def restore(self, resume_path: Path | None) -> None:
        """Load the checkpoint (weights, optimizer, schedule, RNG, state); set this run's
        length and cadence in the state."""
        cfg, state = self.cfg, self.state
        if resume_path is not None:
            self.state = state = load_checkpoint(self.accelerator, resume_path)
            logger.info(
                "Resumed from %s: step %d, epoch %d, %d batches into it.",
                resume_path,
                state.global_step,
                state.completed_epochs,
                state.batches_in_epoch,
            )
        elif cfg.resume_from_checkpoint:
            logger.info(
                "--resume_from_checkpoint true: no complete checkpoint in %s, starting fresh.",
                cfg.output_dir,
            )
        state.max_steps, state.num_train_epochs = self.total_steps, self.num_train_epochs
        state.logging_steps, state.eval_steps = cfg.logging_steps, cfg.eval_steps
        state.save_steps, state.train_batch_size = cfg.save_steps, cfg.per_device_train_batch_size

    # --------------------------------------------------------- evaluation, best, saves

    def evaluate_on_start(self) -> None:
        """``eval_on_start``: the weights before fine-tuning, logged at step 0 (once: a resumed
        run has it in its restored ``log_history``)."""
        state = self.state
        if not self.cfg.eval_on_start or state.global_step > 0 or state.eval_at(0) is not None:
            return
        metrics = evaluate(self.accelerator, self.module, self.eval_dl, self.task)
        logger.info("Initial eval: %s", fmt(metrics))
        state.log_eval(metrics)
        log_metrics(self.accelerator, "eval", metrics, 0)
        self.log_images()
        self.write_state()

    def evaluate_now(self) -> dict:
        """Evaluate the current weights, log them, and keep them as ``best/`` if better."""
        metrics = evaluate(self.accelerator, self.module, self.eval_dl, self.task)
        logger.info("Eval at step %d: %s", self.state.global_step, fmt(metrics))
        self.state.log_eval(metrics)
        log_metrics(self.accelerator, "eval", metrics, self.state.global_step)
        self.log_images()
        self.record_best(metrics)
        self.write_state()
        return metrics

    def log_images(self) -> None:
        log_eval_images(
            self.accelerator,
            self.module,
            self.task,
            self.eval_ds,
            self.processor,
            self.cfg,
            self.state.global_step,
        )

    def record_best(self, metrics: dict) -> None:
        """``metric_for_best_model`` of an evaluation: steps a plateau schedule, and a new
        best is exported to ``best/`` (with its card)."""
        value = metrics.get(self.metric)
        if value is None:
            raise ConfigError(
                f"metric_for_best_model {self.cfg.metric_for_best_model!r} is not among the "
                f"eval metrics {sorted(metrics)}."
            )
        if optim.is_plateau(self.scheduler):
            self.scheduler.step(value)
        if self.state.update_best(value, self.cfg.greater_is_better):
            if self.accelerator.is_main_process:
                self.export(self.out_dir / "best", metrics)
            self.accelerator.wait_for_everyone()

    def stop_early(self) -> bool:
        """The one early-stopping rule: ``early_stopping_patience`` evaluations without a
        better ``metric_for_best_model``."""
        patience, waited = self.cfg.early_stopping_patience, self.state.evals_without_improvement
        if patience and waited >= patience:
            logger.info("Early stopping: %d evaluations without improvement.", waited)
            return True
        return False

    def export(self, target: Path, metrics: dict | None) -> None:
        """The current weights as a model folder; with ``metrics``, its results and card."""
        results = None
        if metrics is not None:
            initial = self.state.eval_at(0)
            n = self.accelerator.num_processes
            results = folder_results(self.state, metrics, initial, self.metric, n)
        export_model(
            self.task, self.accelerator, self.module, self.processor, self.cfg, target, results
        )

    def save(self, exact: bool = False) -> Path:
        """Save ``checkpoint-<global_step>``, once per step (save_steps and an epoch end
        coincide); ``exact``: again if the data position moved since (a voided window before
        a stop). Then ``trainer_state.json`` and the pushes of ``hub_strategy``."""
        state = self.state
        position = (state.global_step, state.completed_epochs, state.batches_in_epoch)
        if self.saved_at and self.saved_at[0][0] == state.global_step:
            if not exact or self.saved_at[0] == position:
                return self.saved_at[1]
        if state.best_global_step == state.global_step:
            state.best_model_checkpoint = str(self.out_dir / checkpoint_name(state.global_step))
        path = save_checkpoint(
            self.accelerator, self.out_dir, state, self.cfg.save_total_limit, to_dict(self.cfg)
        )
        self.saved_at = (position, path)
        self.write_state()
        self.pushes.on_save(state.global_step, path, functools.partial(self.export, metrics=None))
        return path

    def write_state(self) -> None:
        """``output_dir/trainer_state.json`` (what the run plots read), main process only."""
        if self.accelerator.is_main_process:
            self.state.save(self.out_dir / TRAINER_STATE_NAME)

    # ------------------------------------------------------------------------- stopping

    def stop_now(self) -> None:
        """SIGTERM: save where the run is and stop (every rank, see ``training_step``)."""
        path = self.save(exact=True) if self.state.global_step > 0 else None
        if self.bar is not None:
            self.bar.close()
        signum = self.stop_request.signum or signal.SIGTERM
        err = TrainingInterrupted(signum, self.state.global_step, path)
        logger.warning("%s", err)
        self.accelerator.end_training()
        raise err

    def stop_requested(self) -> bool:
        """Whether any rank received SIGTERM (one small all-reduce; used outside steps)."""
        asked = float(self.stop_request.signum is not None)
        flag = torch.tensor([asked], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    # --------------------------------------------------------------------------- epochs

    def train_epochs(self) -> None:
        """Epochs until ``max_steps`` optimizer steps (voided ones made up) or
        ``num_train_epochs`` epochs, early stopping, or SIGTERM."""
        cfg, state = self.cfg, self.state
        self.module.train()
        self.bar = tqdm(
            total=self.total_steps,
            initial=state.global_step,
            disable=not self.accelerator.is_main_process,
            desc="train",
            dynamic_ncols=True,
        )
        self.speed = Throughput()
        self.stop = state.global_step >= self.total_steps
        if self.stop_requested():
            self.stop_now()
        for epoch in itertools.count(state.completed_epochs):
            if self.stop or (cfg.max_steps <= 0 and epoch >= self.num_train_epochs):
                break
            if self.run_epoch(epoch):
                self.end_epoch(epoch)
        if self.stop_requested():
            self.stop_now()
        self.bar.close()
        report_voided_steps(self.state, self.cfg, self.num_train_epochs, self.total_steps)

    def run_epoch(self, epoch: int) -> bool:
        """The (rest of the) epoch's micro-batches; whether it ran to its end."""
        state = self.state
        state.completed_epochs = epoch
        skip = state.batches_in_epoch
        loader = self.accelerator.skip_first_batches(self.train_dl, skip) if skip else self.train_dl
        # The prepared loader re-applies its own epoch counter to the sampler when iterated;
        # set it (and the dataset's, which seeds augmentation and prompts) explicitly.
        loader.set_epoch(epoch)
        self.train_ds.set_epoch(epoch)
        for batch in loader:
            stats = training_step(
                self.accelerator,
                self.module,
                self.optimizer,
                self.scheduler,
                batch,
                self.cfg,
                self.window,
                stop=self.stop_request.signum is not None,
            )
            state.batches_in_epoch += 1
            state.set_position(len(self.train_dl))
            if stats is not None and self.after_step(stats):
                return False
        return True

    def after_step(self, stats: dict) -> bool:
        """Everything after an optimizer step (taken or voided); whether the epoch must end
        here (the run stops)."""
        cfg, state = self.cfg, self.state
        self.speed.add_samples(stats["samples"])
        for k, v in stats["counts"].items():
            state.data_counters[k] = state.data_counters.get(k, 0) + v
        if stats["nonfinite"]:
            self.voided_step(stats)
            return False
        state.nonfinite_in_a_row = 0
        state.global_step += 1
        stats["step_time_s"] = self.speed.step(stats["loss"])
        lr = self.optimizer.param_groups[0]["lr"]
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{lr:.2e}")
        if state.global_step % cfg.logging_steps == 0 or state.global_step == 1:
            self.log_step(stats, lr)
        done = state.global_step >= self.total_steps
        if every(cfg, "eval", state.global_step) and not done:
            self.evaluate_now()
            self.stop = self.stop or self.stop_early()
        if every(cfg, "save", state.global_step):
            self.save()
        if stats["stop"]:
            self.stop_now()
        # the last step on an epoch's last batch still gets the epoch-end eval/checkpoint
        if self.stop or (done and not self.accelerator.gradient_state.end_of_dataloader):
            self.stop = True
            return True
        return False

    def voided_step(self, stats: dict) -> None:
        """A window with a non-finite loss: its step was skipped; too many in a row stop the
        run naming the images."""
        state = self.state
        state.nonfinite_in_a_row += 1
        state.nonfinite_total += 1
        logger.warning(
            "Non-finite loss at step %d (images %s): step skipped (%d in a row).",
            state.global_step,
            stats["bad_ids"],
            state.nonfinite_in_a_row,
        )
        self.accelerator.log(
            {"train/nonfinite_steps": state.nonfinite_total}, step=state.global_step
        )
        if state.nonfinite_in_a_row >= self.cfg.max_nonfinite_steps:
            raise FloatingPointError(
                f"{state.nonfinite_in_a_row} non-finite losses in a row (last batch: images "
                f"{stats['bad_ids']}). Lower learning_rate, check those annotations, or "
                "use bf16 instead of fp16."
            )
        if stats["stop"]:
            self.stop_now()

    def log_step(self, stats: dict, lr: float) -> None:
        """A logging step: trackers and ``training.log`` (``train/...``), and a training entry
        of ``log_history``."""
        acc, state = self.accelerator, self.state
        log = {f"train/{k}": v for k, v in stats.items() if isinstance(v, float)}
        log["train/lr"] = lr
        log["train/samples_per_s"] = self.speed.samples_per_s(acc.num_processes)
        log["train/epoch"] = state.epoch
        if torch.cuda.is_available():
            log["train/peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        acc.log(log, step=state.global_step)
        logger.info("step %d %s", state.global_step, fmt(log))
        state.log_train(stats, lr)

    def end_epoch(self, epoch: int) -> None:
        """A full epoch: evaluate and checkpoint at its end (``*_strategy: epoch``)."""
        cfg, state = self.cfg, self.state
        self.stop = state.global_step >= self.total_steps
        state.completed_epochs, state.batches_in_epoch = epoch + 1, 0
        state.set_position(len(self.train_dl))
        if cfg.eval_strategy == "epoch":
            self.evaluate_now()
        if cfg.save_strategy == "epoch":
            self.save()
        self.stop = self.stop or self.stop_early()
        if self.stop_requested():
            self.stop_now()

    # -------------------------------------------------------------------------- the end

    def final_metrics(self) -> dict:
        """The last weights' evaluation (an evaluation of these same weights at this step
        is not repeated)."""
        state = self.state
        metrics = state.eval_at(state.global_step) if state.global_step > 0 else None
        if metrics is None:
            metrics = evaluate(self.accelerator, self.module, self.eval_dl, self.task)
            state.log_eval(metrics)
            self.record_best(metrics)
        return metrics

    def write_final(self, final: dict) -> dict:
        """``final/``: the last weights, or with ``load_best_model_at_end`` a copy of
        ``best/``; returns the metrics of what ``final/`` holds."""
        state, acc = self.state, self.accelerator
        best_step = state.best_global_step
        use_best = self.cfg.load_best_model_at_end and best_step not in (None, state.global_step)
        if use_best:
            final = state.eval_at(best_step) or final
            logger.info(
                "load_best_model_at_end: final/ holds the best evaluated weights (step %d, "
                "%s=%.4g).",
                best_step,
                self.metric,
                state.best_metric,
            )
        if acc.is_main_process:
            if use_best:
                copy_model(self.out_dir / "best", self.out_dir / "final")
            else:
                self.export(self.out_dir / "final", final)
        return final

    def finish(self) -> dict:
        """The final evaluation, the before/after table, ``final/``, the results files,
        ``trainer_state.json``, the final push. Returns ``all_results``."""
        cfg, acc, state = self.cfg, self.accelerator, self.state
        final = self.final_metrics()
        if cfg.save_strategy == "steps":
            self.save()  # as transformers' Trainer: the last step is always resumable
        final = self.write_final(final)
        initial = state.eval_at(0)
        logger.info("Final eval: %s", fmt(final))
        logger.info("Before and after fine-tuning:\n%s", before_after_table(initial, final))
        log_metrics(acc, "final", final, state.global_step)
        evals = eval_results(state, final, initial, self.metric)
        speed = self.speed.totals(acc.num_processes)
        trains = train_results(state, speed, len(self.train_ds), acc.num_processes)
        state.log_history.append({"step": state.global_step, "epoch": state.epoch, **speed})
        self.write_state()
        if cfg.push_to_hub:
            trains["hub_push_failures"] = self.pushes.failures  # (the final push's too)
        if acc.is_main_process:
            save_results(self.out_dir, evals, trains)
        acc.wait_for_everyone()
        if cfg.push_to_hub:
            self.push_final(evals, trains)
        acc.end_training()
        return {**evals, **trains}

    def push_final(self, evals: dict, trains: dict) -> None:
        """Push ``final/``; failures go into the results files, and a failed final push ends
        the run (after everything is saved) with a RunError saying how to push it later."""
        pushed = self.pushes.push_final(self.state.global_step)
        if self.pushes.failures and self.accelerator.is_main_process:
            save_results(self.out_dir, evals, trains)
        if not pushed:
            self.accelerator.end_training()
        self.pushes.report(pushed)
