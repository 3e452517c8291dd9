"""What a run tells its user: ``training.log``, the console, the trackers, the final table.

:func:`run_logging` sends the ``sam_hf`` loggers to ``training.log`` and the console while a
run lasts (other ranks log warnings only); trackers (``report_to``) get the resolved config
(:func:`tracker_config`) and every logged number; :func:`before_after_table` is the table of
validation metrics before and after fine-tuning that a run ends with.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from sam_hf.config import to_dict

logger = logging.getLogger("sam_hf")


class _DeferredFileHandler(logging.Handler):
    """Keeps records until :meth:`open`, then writes them and everything after to the file,
    so a run refused by its start-up checks leaves no ``training.log`` behind."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None

    def open(self, path: Path) -> None:
        self.file = logging.FileHandler(path)
        self.file.setFormatter(self.formatter)
        for r in self.records:
            self.file.handle(r)
        self.records.clear()

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.handle(record)
        else:
            self.records.append(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


@contextlib.contextmanager
def run_logging(accelerator: Accelerator, output_dir: str) -> Iterator[Callable[[], None]]:
    """``training.log`` and the console for the ``sam_hf`` loggers while a run lasts.

    Yields the function that opens ``training.log`` (records until then are kept and written
    first): the trainer calls it once the run's checks passed. The handlers are removed (and
    the file closed) when the run ends, and records still propagate, so an application or
    test that calls ``train`` keeps its own logging. Other ranks log warnings only.
    """
    handlers: list[logging.Handler] = []
    deferred: _DeferredFileHandler | None = None
    if accelerator.is_main_process:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        deferred = _DeferredFileHandler()
        handlers = [deferred, logging.StreamHandler()]
        for h in handlers:
            h.setFormatter(formatter)
            logger.addHandler(h)
    old_level = logger.level
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)

    def open_file() -> None:
        if deferred is not None and deferred.file is None:
            deferred.open(Path(output_dir) / "training.log")

    try:
        yield open_file
    finally:
        logger.setLevel(old_level)
        for h in handlers:
            logger.removeHandler(h)
            h.close()


def tracker_config(cfg: Any) -> dict[str, int | float | str | bool]:
    """The resolved config in a form every tracker accepts: TensorBoard's hparams take only
    scalars and strings, so lists, dicts and None are written as their JSON text."""
    return {
        k: v if isinstance(v, int | float | str | bool) else json.dumps(v)
        for k, v in to_dict(cfg).items()
    }


def init_trackers(accelerator: Accelerator, cfg: Any) -> None:
    """Start the ``report_to`` trackers with the resolved config (wandb: named after the run,
    its files in ``output_dir``)."""
    if not [t for t in cfg.report_to if t != "none"]:
        return
    out_dir = Path(cfg.output_dir)
    accelerator.init_trackers(
        cfg.wandb_project,
        config=tracker_config(cfg),
        init_kwargs={"wandb": {"name": cfg.run_name or out_dir.name, "dir": str(out_dir)}},
    )


def log_metrics(accelerator: Accelerator, prefix: str, metrics: dict, step: int) -> None:
    """The numbers of ``metrics`` to the trackers as ``<prefix>/<name>``."""
    accelerator.log(
        {f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, int | float)}, step=step
    )


def fmt(d: dict) -> str:
    """``k=v`` pairs for a log line (floats to 4 significant digits)."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def before_after_table(initial: dict | None, final: dict) -> str:
    """The numeric metrics of ``initial`` (when evaluated), ``final`` and their difference, as
    the aligned text table a run ends with (the README quotes the demos from it)."""
    initial = initial or {}
    keys = [k for k, v in final.items() if isinstance(v, float)]
    rows = [("metric", "before", "after", "change")]
    for k in keys:
        before = initial.get(k)
        rows.append(
            (
                k,
                "-" if before is None else f"{before:.4f}",
                f"{final[k]:.4f}",
                "-" if before is None else f"{final[k] - before:+.4f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    )


class Throughput:
    """Wall-clock bookkeeping of the training loop: samples/s between two log lines, the time
    of each optimizer step, and this process's totals for the train results."""

    def __init__(self) -> None:
        self.start = self.last_log = self.last_step = time.perf_counter()
        self.samples_since_log = self.samples = self.steps = 0
        self.loss_sum = 0.0

    def add_samples(self, n: int) -> None:
        """Images of a micro-batch window (this rank's)."""
        self.samples_since_log += n
        self.samples += n

    def step(self, loss: float) -> float:
        """An optimizer step was taken; the seconds since the previous one."""
        now = time.perf_counter()
        seconds, self.last_step = now - self.last_step, now
        self.steps += 1
        self.loss_sum += loss
        return seconds

    def samples_per_s(self, num_processes: int) -> float:
        """Samples per second over all ranks since the previous call."""
        now = time.perf_counter()
        sps = self.samples_since_log * num_processes / max(now - self.last_log, 1e-9)
        self.last_log, self.samples_since_log = now, 0
        return sps

    def totals(self, num_processes: int) -> dict[str, float]:
        """transformers' train metrics for the steps this process took: mean loss, runtime,
        samples and steps per second."""
        runtime = max(time.perf_counter() - self.start, 1e-9)
        return {
            "train_loss": self.loss_sum / self.steps if self.steps else 0.0,
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(self.samples * num_processes / runtime, 3),
            "train_steps_per_second": round(self.steps / runtime, 3),
        }


def report_voided_steps(state: Any, cfg: Any, num_train_epochs: int, total_steps: int) -> None:
    """max_steps promises optimizer steps: steps voided by a non-finite loss were made up
    with more batches; num_train_epochs promises epochs: the steps are missing, say so."""
    if not state.nonfinite_total:
        return
    if cfg.max_steps > 0:
        logger.info(
            "%d optimizer steps were voided by non-finite losses and made up: %d steps ran.",
            state.nonfinite_total,
            state.global_step,
        )
        return
    logger.warning(
        "%d optimizer steps were voided by non-finite losses: the %d epochs ran %d "
        "optimizer steps instead of %d (set max_steps to have them made up).",
        state.nonfinite_total,
        num_train_epochs,
        state.global_step,
        total_steps,
    )
