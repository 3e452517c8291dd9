"""The training loop shared by the SAM2 and SAM3 recipes, on Accelerate: :func:`train`.

A run first refuses what would go wrong later, before anything is written to ``output_dir``:
an unwritable or full folder, missing tracker credentials, a folder held by another run
(:mod:`~sam_hf.training.lock`), a checkpoint to resume that is damaged or was trained with
other settings (:mod:`~sam_hf.training.resume`). Then, with SIGTERM turned into a clean stop
(:mod:`~sam_hf.training.signals`, exit 143 in the recipes), a
:class:`~sam_hf.training.run.Run` goes through the stages: set-up, the evaluation before
training, the epochs, the outputs.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from sam_hf.training.files import remove_leftovers
from sam_hf.training.lock import RunLock, acquire_run_lock
from sam_hf.training.reporting import run_logging
from sam_hf.training.resume import check_resume, set_aside_damaged
from sam_hf.training.run import Run
from sam_hf.training.signals import stop_on_sigterm
from sam_hf.training.startup import (
    build_accelerator,
    check_output_dir,
    check_trackers,
    on_main_process,
)
from sam_hf.training.task import Task

logger = logging.getLogger("sam_hf")


def train(cfg: Any, task: Task) -> dict:
    """Run a whole fine-tune as configured; returns ``all_results`` (also written to disk).

    Before anything is written to ``output_dir`` the run takes its lock (a second run on the
    folder is refused, naming the first) and checks what ``--resume_from_checkpoint``
    continues from; only then do ``training.log``, ``config.yaml`` and the rest appear.
    Raises :class:`TrainingInterrupted` after saving a checkpoint when SIGTERM arrives.
    """
    check_output_dir(cfg.output_dir)
    check_trackers(cfg)
    accelerator = build_accelerator(cfg)
    # The saved config records the precision the run used, also when the launcher chose it.
    cfg.bf16, cfg.fp16 = (
        accelerator.mixed_precision == "bf16",
        accelerator.mixed_precision == "fp16",
    )
    with run_logging(accelerator, cfg.output_dir) as open_log_file:
        lock = on_main_process(accelerator, functools.partial(acquire_run_lock, cfg.output_dir))
        try:
            with stop_on_sigterm() as stop:
                resume_path = _open_folder(cfg, accelerator, lock, open_log_file)
                return Run(cfg, task, accelerator, stop).run(resume_path)
        finally:
            if accelerator.is_main_process:
                lock.release()


def _open_folder(cfg: Any, accelerator: Accelerator, lock: RunLock, open_log: Any) -> Path | None:
    """The resume checks, then (they passed) ``training.log`` and the tidying of what killed
    saves left; returns the checkpoint to resume from."""
    if accelerator.is_main_process:
        for note in lock.notes:
            logger.warning(note)
    resume_path, notes, damaged = on_main_process(accelerator, functools.partial(check_resume, cfg))
    open_log()  # from here on the run writes into output_dir
    if accelerator.is_main_process:
        for note in notes:
            logger.warning(note)
        set_aside_damaged(damaged)
        for line in remove_leftovers(cfg.output_dir):
            logger.info("Leftover of an interrupted save: %s.", line)
    accelerator.wait_for_everyone()
    return resume_path
