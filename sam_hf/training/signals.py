"""SIGTERM during a run: save a checkpoint after the current optimizer step, then stop.

SLURM and Kubernetes send SIGTERM some time before they kill a job. :func:`stop_on_sigterm`
turns it into a flag the loop acts on after the current optimizer step (every rank together);
the loop saves a checkpoint and raises :class:`TrainingInterrupted`, which the recipes turn
into exit status 143 so a scheduler requeues the job instead of reading it as finished.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class TrainingInterrupted(Exception):
    """The run was stopped by a signal (SIGTERM) after saving a checkpoint.

    Raised rather than returning partial results: ``final/``, ``eval_results.json``'s final
    numbers and a Hub push describe a finished run, and a process stopped by SIGTERM must not
    exit 0 (schedulers read that as "done" and do not requeue it). The recipes exit with
    ``exit_code`` (128 + signal: 143), the status of a process SIGTERM ended.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        saved = (
            f"checkpoint {checkpoint} saved"
            if checkpoint is not None
            else "no optimizer step had been taken, nothing to save"
        )
        super().__init__(
            f"Stopped by {name} at step {step}: {saved}. Continue with --resume_from_checkpoint true."
        )


class StopRequest:
    """Set by the SIGTERM handler; the loop acts on it after the current optimizer step."""

    def __init__(self) -> None:
        self.signum: int | None = None


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """While a run lasts, SIGTERM (what SLURM and Kubernetes send before killing) only sets a
    flag: the loop saves a checkpoint and stops cleanly. A second SIGTERM goes to the previous
    handler (by default: terminate now). Signal handlers can only be installed from the main
    thread; elsewhere nothing is installed. The previous handler is restored at the end."""
    req = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield req
        return

    def handler(signum: int, frame: Any) -> None:
        if req.signum is not None:
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        req.signum = signum

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield req
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
