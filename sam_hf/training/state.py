"""The trainer's state, saved as ``trainer_state.json`` in transformers' schema.

The file sits in ``output_dir`` (rewritten at every evaluation, checkpoint and at the end) and
inside every ``checkpoint-N/``, with the fields of transformers' ``TrainerState``:
``global_step``, ``epoch`` (fractional epochs done), ``max_steps``, ``num_train_epochs``,
``logging_steps``, ``eval_steps``, ``save_steps``, ``best_metric``, ``best_global_step``,
``best_model_checkpoint`` and ``log_history``: training entries (``step``, ``epoch``,
``loss``, ``learning_rate``, ``grad_norm``, per-term losses ``loss_<term>``) and evaluation
entries (``step``, ``epoch``, ``eval_<metric>``) in the order they happened. Anything that
reads a Trainer's state (the run plots of :mod:`sam_hf.eval.run_curves`, a notebook) reads
this one.

A few fields of sam_hf's own follow them: the data position (``completed_epochs``,
``batches_in_epoch``: micro-batches of the current epoch consumed) and the counters the loop
continues from (early stopping, non-finite steps, the collators' data counters). With the
``save_state`` files they are everything an exact resume needs, and since ``log_history`` is
restored too, a resumed run's state equals an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam_hf.training.files import atomic_write_text

#: transformers' ``TRAINER_STATE_NAME``.
TRAINER_STATE_NAME = "trainer_state.json"
#: Prefix of evaluation metrics in ``log_history`` and the results files (``eval_mean_iou``).
EVAL_PREFIX = "eval_"


def prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """``{"mean_iou": x}`` -> ``{"<prefix>_mean_iou": x}`` (transformers' metric_key_prefix)."""
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def unprefixed(entry: dict[str, Any]) -> dict[str, Any]:
    """The ``eval_<metric>`` values of a log entry, without the prefix."""
    return {k[len(EVAL_PREFIX) :]: v for k, v in entry.items() if k.startswith(EVAL_PREFIX)}


@dataclass
class TrainerState:
    """transformers' ``TrainerState`` fields, then what sam_hf continues a run from."""

    epoch: float = 0.0
    global_step: int = 0
    max_steps: int = 0
    num_train_epochs: int = 0
    logging_steps: int = 0
    eval_steps: int | None = None
    save_steps: int | None = None
    train_batch_size: int = 0
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    log_history: list[dict] = field(default_factory=list)
    # sam_hf: the data position (the epoch in progress, its micro-batches consumed)
    completed_epochs: int = 0
    batches_in_epoch: int = 0
    # sam_hf: counters the loop continues from
    evals_without_improvement: int = 0
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    data_counters: dict = field(default_factory=dict)  # sums of the collators' counts

    def to_json(self) -> str:
        """The file's text (sorted keys, as transformers writes it)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> TrainerState:
        """The state in ``path``; keys of another version that this one lacks are ignored."""
        data = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def set_position(self, micro_batches_per_epoch: int) -> None:
        """``epoch`` as transformers counts it: epochs done, with the fraction of this one."""
        done = self.batches_in_epoch / max(micro_batches_per_epoch, 1)
        self.epoch = round(self.completed_epochs + done, 4)

    def log_train(self, stats: dict[str, Any], learning_rate: float) -> None:
        """A training entry: the step's loss, learning rate, grad norm and loss terms."""
        entry: dict[str, Any] = {"step": self.global_step, "epoch": self.epoch}
        entry["loss"] = stats["loss"]
        entry["learning_rate"] = learning_rate
        if "grad_norm" in stats:
            entry["grad_norm"] = stats["grad_norm"]
        entry.update({k: v for k, v in stats.items() if k.startswith("loss_")})
        self.log_history.append(entry)

    def log_eval(self, metrics: dict[str, Any]) -> None:
        """An evaluation entry with the metrics as ``eval_<metric>``."""
        entry = {"step": self.global_step, "epoch": self.epoch}
        self.log_history.append({**entry, **prefixed("eval", metrics)})

    def evals(self) -> list[dict[str, Any]]:
        """The evaluation entries of ``log_history``, in order."""
        return [e for e in self.log_history if any(k.startswith(EVAL_PREFIX) for k in e)]

    def eval_at(self, step: int | None) -> dict[str, Any] | None:
        """The metrics of the last evaluation at ``step`` (None: there was none)."""
        found = [e for e in self.evals() if e["step"] == step]
        return unprefixed(found[-1]) if found else None

    def update_best(self, value: float, greater_is_better: bool) -> bool:
        """Record an evaluation's ``metric_for_best_model``; whether it is a new best."""
        best = self.best_metric
        if best is None or (value > best if greater_is_better else value < best):
            self.best_metric, self.best_global_step = float(value), self.global_step
            self.evals_without_improvement = 0
            return True
        self.evals_without_improvement += 1
        return False
