"""The training loop shared by the SAM2 and SAM3 recipes, on Accelerate.

Shape of the loop (after lerobot's ``update_policy``): one function, :func:`training_step`,
handles one micro-batch inside ``accelerator.accumulate`` and performs the optimizer step when
gradients sync. All rank logic goes through Accelerate (``main_process_first``,
``gather_for_metrics``, ``is_main_process``, ``wait_for_everyone``, ``end_training``).

Exact resume: the data order of epoch ``e`` is a permutation seeded by ``(seed, e)`` and every
sample's augmentation/prompts by ``(seed, e, index)`` (see ``sam_hf.data.transforms``), so a
checkpoint only needs the model, optimizer, scheduler, RNG states (``save_state``) and how many
micro-batches of the current epoch were consumed; resuming skips exactly those.

Faults (see ``sam_hf.training.checkpointing``): a run holds ``output_dir/run.lock`` for its whole life;
``--resume_from_checkpoint`` checks the checkpoint's integrity and config before anything is written; SIGTERM
saves a checkpoint and stops (:class:`TrainingInterrupted`, exit 143 in the recipes); a full
disk while saving is a :class:`~sam_hf.training.checkpointing.DiskFullError` naming path and sizes; a
failed Hub push during training is logged and retried and never stops training.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from sam_hf.config import ConfigError, save_config, to_dict
from sam_hf.config.precision import mixed_precision
from sam_hf.training import checkpointing
from sam_hf.training.checkpointing import RunError

logger = logging.getLogger("sam_hf")

#: Per-batch counts the collators report; summed over the run into eval_results.json.
COUNTER_KEYS = ("num_skipped_empty", "num_empty_phrases", "num_truncated")
#: Seconds before the one retry of a final Hub push that failed for a network reason.
HUB_RETRY_DELAY_S = 10.0


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


class Task(Protocol):
    """What a model family provides to the trainer (see ``sam_hf.tasks.core``)."""

    family: str

    def prepare_data(self, cfg: Any) -> None: ...
    def build_model(self, cfg: Any) -> tuple[torch.nn.Module, Any]: ...
    def build_datasets(self, cfg: Any, processor: Any) -> tuple[Any, Any]: ...
    def collator(self, cfg: Any, train: bool) -> Any: ...
    def eval_records(self, predictions: list[dict]) -> list[Any]: ...
    def compute_metrics(self, records: list[Any]) -> dict[str, float]: ...
    def overlay_items(
        self, samples: list[dict], preds: list[dict], processor: Any, cfg: Any
    ) -> list[dict]: ...
    def save_pretrained(
        self, module: torch.nn.Module, processor: Any, out_dir: Path, cfg: Any
    ) -> None: ...


class EpochShuffleSampler(Sampler[int]):
    """A permutation of the dataset seeded by ``(seed, epoch)``: the same on every rank and
    after a resume, unlike a sampler that draws from the global RNG."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


@dataclass
class TrainerState:
    """What a checkpoint needs beyond ``save_state`` to continue a run exactly."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    # sums of the collators' per-batch counters (num_skipped_empty, num_truncated, ...)
    data_counters: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ------------------------------------------------------------------------------ set-up


def check_output_dir(output_dir: str | os.PathLike, min_free_mb: int = 50) -> None:
    """Fail now, not at the first checkpoint, when ``output_dir`` cannot hold a run."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-") as f:
            f.write(b"0" * 1024)
            f.flush()
    except OSError as e:
        raise ConfigError(
            f"output_dir {path} is not writable ({e.strerror or e}); choose another --output_dir."
        ) from e
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < min_free_mb:
        raise ConfigError(
            f"output_dir {path} has only {free_mb:.0f} MB free; checkpoints need more. "
            "Free space or choose another --output_dir."
        )


def check_trackers(cfg: Any) -> None:
    """wandb raises mid-run without credentials; say so before anything starts."""
    if "wandb" not in cfg.report_to:
        return
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return
    if os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").is_file():
        return
    raise ConfigError(
        "report_to includes wandb but no wandb credentials were found (WANDB_API_KEY or "
        "`wandb login`). Log offline with WANDB_MODE=offline (sync later with `wandb sync`), "
        "or drop wandb from report_to."
    )


def build_accelerator(cfg: Any) -> Accelerator:
    trackers = [t for t in cfg.report_to if t != "none"]
    return Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # Unset bf16/fp16 leave the choice to `accelerate launch` / `accelerate config`.
        mixed_precision=mixed_precision(cfg),
        log_with=trackers or None,
        project_dir=cfg.output_dir,
        # SAM2's mask-prompt embedding and SAM3's geometry encoder get no gradient in steps
        # without such prompts; DDP must be told, or it waits for them forever.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        # The schedule counts optimizer steps of this run; Accelerate's default would step
        # it num_processes times per optimizer step (finishing a cosine early on N ranks).
        step_scheduler_with_optimizer=False,
    )


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
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        deferred = _DeferredFileHandler()
        handlers = [deferred, logging.StreamHandler()]
        for h in handlers:
            h.setFormatter(fmt)
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


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and normalisation weights (1-D tensors).

    Frozen parameters are left out entirely so AdamW allocates no state for them.
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(cfg: Any, module: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (frozen ones get no state), or bitsandbytes' 8-bit
    AdamW for ``optim: adamw_bnb_8bit``.

    The 8-bit variant keeps both moments of every tensor with >= 4096 elements as one byte per
    element plus an fp32 scale per 256-element block (~2 bytes/param instead of AdamW's 8);
    smaller tensors keep fp32 moments. bitsandbytes >= 0.50.2 runs it on CUDA and on CPU.
    """
    groups = param_groups(module, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ConfigError("Every parameter is frozen: unfreeze a part or enable LoRA.")
    kw = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    if cfg.optim == "adamw_bnb_8bit":
        # Its CPU backend warns at import about an optional 4-bit matmul kernel package that
        # the optimizer never uses; keep that misleading "pip install kernels" out of the log.
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ConfigError(
                "optim adamw_bnb_8bit needs bitsandbytes: `pip install 'bitsandbytes>=0.50.2'` "
                "(or set optim: adamw_torch)."
            ) from e
        return bnb.optim.AdamW8bit(groups, **kw)
    return torch.optim.AdamW(groups, **kw)


def warmup_steps(cfg: Any, total_steps: int) -> int:
    """TrainingArguments' ``warmup_steps``: a whole number of steps, or a fraction in (0, 1)
    of all optimizer steps (rounded up, as transformers does)."""
    w = cfg.warmup_steps
    steps = math.ceil(w * total_steps) if 0 < w < 1 else int(w)
    return min(steps, max(total_steps - 1, 0))


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """``transformers.get_scheduler`` with the config's type, warmup and kwargs.

    ``reduce_lr_on_plateau`` watches ``metric_for_best_model``, so its ``mode`` follows
    ``greater_is_better`` unless given (torch's default "min" would cut the LR whenever the
    IoU *improves*).
    """
    kwargs = dict(cfg.lr_scheduler_kwargs)
    if cfg.lr_scheduler_type == "reduce_lr_on_plateau":
        kwargs.setdefault("mode", "max" if cfg.greater_is_better else "min")
    return get_scheduler(
        cfg.lr_scheduler_type,
        optimizer,
        num_warmup_steps=warmup_steps(cfg, total_steps),
        num_training_steps=total_steps,
        scheduler_specific_kwargs=kwargs,
    )


def every(cfg: Any, kind: str, step: int) -> bool:
    """Whether ``step`` is an ``eval``/``save`` step under ``<kind>_strategy: steps``."""
    n = getattr(cfg, f"{kind}_steps")
    return getattr(cfg, f"{kind}_strategy") == "steps" and bool(n) and step % n == 0


def is_plateau(scheduler: Any) -> bool:
    """Whether ``scheduler`` (bare or wrapped by ``accelerator.prepare``) is ReduceLROnPlateau,
    which steps once per evaluation with the metric instead of once per optimizer step."""
    inner = getattr(scheduler, "scheduler", scheduler)
    return isinstance(inner, torch.optim.lr_scheduler.ReduceLROnPlateau)


# ---------------------------------------------------------------------------- one step


def training_step(
    accelerator: Accelerator,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: dict,
    cfg: Any,
    window: dict,
    stop: bool = False,
) -> dict | None:
    """One micro-batch; performs the optimizer step when gradients sync.

    Returns the step's stats when an optimizer step was taken (or skipped for a non-finite
    loss), ``None`` for a micro-batch that only accumulated. A non-finite loss on ANY rank skips
    the backward on every rank (they must agree or DDP's all-reduce hangs) and voids the whole
    accumulation window, so a NaN never reaches the weights or AdamW's moments. ``stop`` (this
    rank received SIGTERM) travels in the same all-reduce: ``stats["stop"]`` is true on every
    rank when any rank asked to stop, so all of them save the same checkpoint and stop together.
    """
    with accelerator.accumulate(module):
        with accelerator.autocast():
            out = module(batch)
        loss = out["loss"]
        flags = torch.stack(
            [
                torch.isfinite(loss.detach()).float().reshape(()),
                torch.tensor(float(stop), device=loss.device),
            ]
        )
        flags = accelerator.reduce(flags, reduction="sum").tolist()
        all_finite = bool(flags[0] == accelerator.num_processes)
        stop_any = flags[1] > 0
        if all_finite:
            accelerator.backward(loss)
        else:
            window["bad"] = True
            window.setdefault("bad_ids", []).extend(batch.get("image_ids", []))
        for k, v in out.get("terms", {}).items():
            window.setdefault("terms", {}).setdefault(k, []).append(float(v))
        window.setdefault("loss", []).append(float(loss.detach()))
        window["samples"] = window.get("samples", 0) + len(batch.get("image_ids", ()))
        counts = window.setdefault("counts", {})
        for k, v in batch.items():
            if k in COUNTER_KEYS:
                counts[k] = counts.get(k, 0) + int(v)
        if not accelerator.sync_gradients:
            return None
        stats: dict[str, Any] = {
            "nonfinite": window.get("bad", False),
            "bad_ids": window.get("bad_ids", []),
            "stop": stop_any,
        }
        if window.get("bad"):
            optimizer.zero_grad(set_to_none=True)
        else:
            grad_norm = None
            if cfg.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
            optimizer.step()
            # plateau steps on the eval metric instead; an fp16 step skipped by the grad
            # scaler leaves the schedule where it is
            if not is_plateau(scheduler) and not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if grad_norm is not None:
                stats["grad_norm"] = float(grad_norm)
        stats["loss"] = sum(window["loss"]) / len(window["loss"])
        for k, v in window.get("terms", {}).items():
            stats[f"loss_{k}" if not k.startswith("loss") else k] = sum(v) / len(v)
        stats["samples"] = window.get("samples", 0)
        stats["counts"] = window.get("counts", {})
        window.clear()
        return stats


# ---------------------------------------------------------------------------- evaluate


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, module: torch.nn.Module, loader: DataLoader, task: Task
) -> dict:
    """Predict on every evaluation image once (no duplicates across ranks) and score.

    Each rank turns its predictions into small picklable records (RLE masks, per-object
    values) and ``gather_for_metrics`` collects them, dropping the samples that the
    distributed sampler repeated to even out the last batch.
    """
    was_training = module.training
    module.eval()
    inner = accelerator.unwrap_model(module)
    records: list[Any] = []
    for batch in loader:
        with accelerator.autocast():
            preds = inner.predict(batch)
        records.extend(
            accelerator.gather_for_metrics(task.eval_records(preds), use_gather_object=True)
        )
    module.train(was_training)
    return task.compute_metrics(records) if records else {}


# ------------------------------------------------------------------------------- train


def register_lora_checkpointing(accelerator: Accelerator) -> None:
    """With LoRA, checkpoints hold the adapters and fully trained heads only (kB, not GB).

    The frozen base is rebuilt from ``model_name_or_path`` on resume, so saving it again at
    every checkpoint would only cost time and disk.
    """
    from safetensors.torch import load_file

    from sam_hf.models.lora import filter_trainable, load_trainable_state_dict

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i in range(len(weights)):
            weights[i] = filter_trainable(weights[i])

    def load_hook(models: list, input_dir: str) -> None:
        for i, m in enumerate(models):
            name = "model.safetensors" if i == 0 else f"model_{i}.safetensors"
            load_trainable_state_dict(m, load_file(os.path.join(input_dir, name)))
        models.clear()  # loaded here; accelerate must not load the filtered dict strictly

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


@torch.no_grad()
def log_eval_images(
    accelerator: Accelerator,
    module: torch.nn.Module,
    task: Task,
    eval_ds: Any,
    processor: Any,
    cfg: Any,
    step: int,
) -> None:
    """Log the first ``log_images`` validation images with predicted and true masks."""
    if not cfg.log_images or not accelerator.is_main_process or not accelerator.trackers:
        return
    from accelerate.utils import send_to_device

    from sam_hf.data.overlays import log_overlays

    samples = [eval_ds[i] for i in range(min(cfg.log_images, len(eval_ds)))]
    batch = send_to_device(task.collator(cfg, train=False)(samples), accelerator.device)
    inner = accelerator.unwrap_model(module)
    was_training = inner.training
    inner.eval()
    with accelerator.autocast():
        preds = inner.predict(batch)
    inner.train(was_training)
    log_overlays(accelerator, task.overlay_items(samples, preds, processor, cfg), step)


def _is_better(cfg: Any, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if cfg.greater_is_better else value < best


def stop_early(cfg: Any, state: TrainerState) -> bool:
    """The one early-stopping rule: ``early_stopping_patience`` evaluations without a better
    ``metric_for_best_model``."""
    if cfg.early_stopping_patience and (
        state.evals_without_improvement >= cfg.early_stopping_patience
    ):
        logger.info(
            "Early stopping: %d evaluations without improvement.", state.evals_without_improvement
        )
        return True
    return False


def on_main_process(accelerator: Accelerator, fn: Callable[[], Any]) -> Any:
    """``fn()`` on the main process only; every rank returns its result or raises its error
    (broadcast from the main process), so a refusal stops all ranks, not just the first."""
    box: list[Any] = [None]
    error: BaseException | None = None
    if accelerator.is_main_process:
        try:
            box[0] = ("ok", fn())
        except Exception as e:
            error = e
            box[0] = ("err", e if isinstance(e, ConfigError | RunError) else RunError(str(e)))
    if accelerator.num_processes > 1:
        broadcast_object_list(box)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


def check_resume(cfg: Any) -> tuple[Path | None, list[str], list[Path]]:
    """What ``--resume_from_checkpoint`` continues from, checked before anything is written: the newest intact
    checkpoint (or the given one, intact), trained with the same result-changing settings.
    Returns the checkpoint (None: start fresh), warnings, and damaged checkpoints skipped."""
    if not cfg.resume_from_checkpoint:
        return None, [], []
    path, notes, damaged = checkpointing.select_resume_checkpoint(
        cfg.output_dir, cfg.resume_from_checkpoint
    )
    if path is not None:
        notes += checkpointing.check_resume_config(
            path, to_dict(cfg), cfg.resume_from_checkpoint, cfg.resume_ignore_config_mismatch
        )
    return path, notes, damaged


def train(cfg: Any, task: Task) -> dict:
    """Run a whole fine-tune as configured; returns ``eval_results`` (also written to disk).

    Before anything is written to ``output_dir`` the run takes its lock (a second run on the
    folder is refused, naming the first) and checks what ``--resume_from_checkpoint`` continues from; only
    then do ``training.log``, ``config.yaml`` and the rest appear. Raises
    :class:`TrainingInterrupted` after saving a checkpoint when SIGTERM arrives.
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
        lock = on_main_process(accelerator, lambda: checkpointing.acquire_run_lock(cfg.output_dir))
        try:
            with stop_on_sigterm() as stop:
                if accelerator.is_main_process:
                    for note in lock.notes:
                        logger.warning(note)
                resume_path, notes, damaged = on_main_process(
                    accelerator, lambda: check_resume(cfg)
                )
                # the checks passed: from here on the run writes into output_dir
                open_log_file()
                if accelerator.is_main_process:
                    for note in notes:
                        logger.warning(note)
                    checkpointing.set_aside_damaged(damaged)
                    for line in checkpointing.remove_leftovers(cfg.output_dir):
                        logger.info("Leftover of an interrupted save: %s.", line)
                accelerator.wait_for_everyone()
                return _run(cfg, task, accelerator, resume_path, stop)
        finally:
            if accelerator.is_main_process:
                lock.release()


def _run(
    cfg: Any,
    task: Task,
    accelerator: Accelerator,
    resume_path: Path | None,
    stop_request: StopRequest,
) -> dict:
    set_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
    logger.info("Resolved config:\n%s", json.dumps(to_dict(cfg), indent=2, default=str))
    if cfg.push_to_hub:
        from huggingface_hub import constants as hub_constants

        if hub_constants.HF_HUB_OFFLINE:  # (what huggingface_hub reads per request)
            logger.warning(
                "push_to_hub is on but HF_HUB_OFFLINE is set: the pushes will fail. Training "
                "goes on; push the result later with `python scripts/push_to_hub.py %s "
                "--repo-id %s`.",
                cfg.output_dir,
                cfg.hub_model_id,
            )

    with accelerator.main_process_first():
        task.prepare_data(cfg)
    module, processor = task.build_model(cfg)  # init_from and LoRA are applied inside
    train_ds, eval_ds = task.build_datasets(cfg, processor)
    if cfg.per_device_train_batch_size > len(train_ds):
        raise ConfigError(
            f"batch_size {cfg.per_device_train_batch_size} is larger than the training split ({len(train_ds)} "
            "images); lower batch_size or add data."
        )

    sampler = EpochShuffleSampler(len(train_ds), cfg.seed)
    train_dl = DataLoader(
        train_ds,
        batch_size=cfg.per_device_train_batch_size,
        sampler=sampler,
        collate_fn=task.collator(cfg, train=True),
        num_workers=cfg.dataloader_num_workers,
        pin_memory=cfg.dataloader_pin_memory,
        drop_last=False,
    )
    eval_dl = DataLoader(
        eval_ds,
        batch_size=cfg.per_device_eval_batch_size or cfg.per_device_train_batch_size,
        shuffle=False,
        collate_fn=task.collator(cfg, train=False),
        num_workers=cfg.dataloader_num_workers,
        pin_memory=cfg.dataloader_pin_memory,
    )

    optimizer = build_optimizer(cfg, module)
    micro_per_epoch = math.ceil(
        len(train_ds) / (cfg.per_device_train_batch_size * accelerator.num_processes)
    )
    # Accelerate also steps on the last, shorter accumulation window of an epoch.
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
    if cfg.max_steps > 0:
        total_steps = cfg.max_steps
        num_train_epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        num_train_epochs = cfg.num_train_epochs
        total_steps = num_train_epochs * steps_per_epoch
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    module, optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(
        module, optimizer, train_dl, eval_dl, scheduler
    )

    if cfg.use_lora:
        register_lora_checkpointing(accelerator)

    state = TrainerState()
    if resume_path is not None:
        state = TrainerState(**checkpointing.load_checkpoint(accelerator, resume_path))
        logger.info(
            "Resumed from %s: step %d, epoch %d, %d batches into it.",
            resume_path,
            state.global_step,
            state.epoch,
            state.batches_in_epoch,
        )
    elif cfg.resume_from_checkpoint:
        logger.info(
            "--resume_from_checkpoint true: no complete checkpoint in %s, starting fresh.",
            cfg.output_dir,
        )

    trackers = [t for t in cfg.report_to if t != "none"]
    if trackers:
        accelerator.init_trackers(
            cfg.wandb_project,
            config=tracker_config(cfg),
            init_kwargs={"wandb": {"name": cfg.run_name or out_dir.name, "dir": str(out_dir)}},
        )

    results_path = out_dir / "eval_results.json"
    results: dict = (
        json.loads(results_path.read_text())
        if (cfg.resume_from_checkpoint and results_path.is_file())
        else {}
    )
    if cfg.eval_on_start and "initial" not in results:
        results["initial"] = evaluate(accelerator, module, eval_dl, task)
        logger.info("Initial eval: %s", _fmt(results["initial"]))
        _log_metrics(accelerator, "eval", results["initial"], state.global_step)
        log_eval_images(accelerator, module, task, eval_ds, processor, cfg, state.global_step)
        _write_json(accelerator, results_path, results)

    def save_best(metrics: dict) -> None:
        value = metrics.get(cfg.metric_for_best_model)
        if value is None:
            raise ConfigError(
                f"metric_for_best_model {cfg.metric_for_best_model!r} is not among the eval "
                f"metrics {sorted(metrics)}."
            )
        if is_plateau(scheduler):
            scheduler.step(value)
        if _is_better(cfg, value, state.best_metric):
            state.best_metric, state.best_step = float(value), state.global_step
            state.evals_without_improvement = 0
            if accelerator.is_main_process:
                _export(task, accelerator, module, processor, cfg, out_dir / "best", metrics)
            accelerator.wait_for_everyone()
        else:
            state.evals_without_improvement += 1

    def run_eval() -> dict:
        metrics = evaluate(accelerator, module, eval_dl, task)
        logger.info("Eval at step %d: %s", state.global_step, _fmt(metrics))
        state.history.append({"step": state.global_step, **metrics})
        _log_metrics(accelerator, "eval", metrics, state.global_step)
        log_eval_images(accelerator, module, task, eval_ds, processor, cfg, state.global_step)
        save_best(metrics)
        return metrics

    def checkpoint(exact: bool = False) -> Path | None:
        """Save ``step-<global_step>``, once per step (save_steps and an epoch end coincide);
        ``exact``: again if the data position moved since (a voided window before a stop)."""
        position = (state.global_step, state.epoch, state.batches_in_epoch)
        if saved_at.get("step") == state.global_step and (
            not exact or saved_at.get("position") == position
        ):
            return saved_at.get("path")
        path = checkpointing.save_checkpoint(
            accelerator,
            cfg.output_dir,
            state.global_step,
            state.to_dict(),
            cfg.save_total_limit,
            config=to_dict(cfg),
        )
        saved_at.update(step=state.global_step, position=position, path=path)
        if cfg.push_to_hub and cfg.hub_strategy == "checkpoint" and (out_dir / "best").is_dir():
            pushes.push("best", state.global_step)
        return path

    pushes = HubPushes(accelerator, cfg, task)

    def stop_now() -> None:
        """SIGTERM: save where the run is and stop (every rank, see ``training_step``)."""
        path = checkpoint(exact=True) if state.global_step > 0 else None
        bar.close()
        signum = stop_request.signum or signal.SIGTERM
        err = TrainingInterrupted(signum, state.global_step, path)
        logger.warning("%s", err)
        accelerator.end_training()
        raise err

    def stop_requested() -> bool:
        """Whether any rank received SIGTERM (one small all-reduce; used outside steps)."""
        flag = torch.tensor([float(stop_request.signum is not None)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    module.train()
    bar = tqdm(
        total=total_steps,
        initial=state.global_step,
        disable=not accelerator.is_main_process,
        desc="train",
        dynamic_ncols=True,
    )
    window: dict = {}
    saved_at: dict = {}
    t_last, samples_since = time.perf_counter(), 0
    t_step = t_last
    stop = state.global_step >= total_steps
    if stop_requested():
        stop_now()
    # max_steps promises optimizer steps: steps voided by a non-finite loss are made up with
    # more batches (epochs run on past num_train_epochs' estimate); num_train_epochs promises epochs.
    for epoch in itertools.count(state.epoch):
        if stop or (cfg.max_steps <= 0 and epoch >= num_train_epochs):
            break
        state.epoch = epoch
        skip = state.batches_in_epoch
        loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        # The prepared loader re-applies its own epoch counter to the sampler when iterated;
        # set it (and the dataset's, which seeds augmentation and prompts) explicitly.
        loader.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        for batch in loader:
            stats = training_step(
                accelerator,
                module,
                optimizer,
                scheduler,
                batch,
                cfg,
                window,
                stop=stop_request.signum is not None,
            )
            state.batches_in_epoch += 1
            if stats is None:
                continue
            samples_since += stats["samples"]
            for k, v in stats["counts"].items():
                state.data_counters[k] = state.data_counters.get(k, 0) + v
            if stats["nonfinite"]:
                state.nonfinite_in_a_row += 1
                state.nonfinite_total += 1
                logger.warning(
                    "Non-finite loss at step %d (images %s): step skipped (%d in a row).",
                    state.global_step,
                    stats["bad_ids"],
                    state.nonfinite_in_a_row,
                )
                accelerator.log(
                    {"train/nonfinite_steps": state.nonfinite_total}, step=state.global_step
                )
                if state.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                    raise FloatingPointError(
                        f"{state.nonfinite_in_a_row} non-finite losses in a row (last batch: images "
                        f"{stats['bad_ids']}). Lower learning_rate, check those annotations, or "
                        "use bf16 instead of fp16."
                    )
                if stats["stop"]:
                    stop_now()
                continue
            state.nonfinite_in_a_row = 0
            state.global_step += 1
            now = time.perf_counter()
            stats["step_time_s"], t_step = now - t_step, now
            lr = optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{lr:.2e}")
            if state.global_step % cfg.logging_steps == 0 or state.global_step == 1:
                now = time.perf_counter()
                sps = samples_since * accelerator.num_processes / max(now - t_last, 1e-9)
                t_last, samples_since = now, 0
                log = {f"train/{k}": v for k, v in stats.items() if isinstance(v, float)}
                log.update({"train/lr": lr, "train/samples_per_s": sps, "train/epoch": epoch})
                if torch.cuda.is_available():
                    log["train/peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                accelerator.log(log, step=state.global_step)
                logger.info("step %d %s", state.global_step, _fmt(log))
            done = state.global_step >= total_steps
            if every(cfg, "eval", state.global_step) and not done:
                run_eval()
                stop = stop or stop_early(cfg, state)
            if every(cfg, "save", state.global_step):
                checkpoint()
            if stats["stop"]:
                stop_now()
            # the last step on an epoch's last batch still gets the epoch-end eval/checkpoint
            if stop or (done and not accelerator.gradient_state.end_of_dataloader):
                stop = True
                break
        else:
            # a full epoch: evaluate and checkpoint at its end
            stop = state.global_step >= total_steps
            state.epoch, state.batches_in_epoch = epoch + 1, 0
            if cfg.eval_strategy == "epoch":
                run_eval()
            if cfg.save_strategy == "epoch":
                checkpoint()
            stop = stop or stop_early(cfg, state)
            if stop_requested():
                stop_now()
    if stop_requested():
        stop_now()
    bar.close()
    if state.nonfinite_total:
        if cfg.max_steps > 0:
            logger.info(
                "%d optimizer steps were voided by non-finite losses and made up: %d steps ran.",
                state.nonfinite_total,
                state.global_step,
            )
        else:
            logger.warning(
                "%d optimizer steps were voided by non-finite losses: the %d epochs ran %d "
                "optimizer steps instead of %d (set max_steps to have them made up).",
                state.nonfinite_total,
                num_train_epochs,
                state.global_step,
                total_steps,
            )

    if state.history and state.history[-1]["step"] == state.global_step:
        final_metrics = {k: v for k, v in state.history[-1].items() if k != "step"}
    else:  # (an epoch-end evaluation of these same weights is not repeated)
        final_metrics = evaluate(accelerator, module, eval_dl, task)
        state.history.append({"step": state.global_step, **final_metrics})
        save_best(final_metrics)
    results["final"] = final_metrics
    results["best"] = {"step": state.best_step, cfg.metric_for_best_model: state.best_metric}
    results["train"] = {
        "global_step": state.global_step,
        "nonfinite_steps": state.nonfinite_total,
        **state.data_counters,
        "num_processes": accelerator.num_processes,
    }
    if cfg.push_to_hub:
        results["train"]["hub_push_failures"] = pushes.failures
    logger.info("Final eval: %s", _fmt(final_metrics))
    logger.info("Before and after fine-tuning:\n%s", before_after_table(results))
    _log_metrics(accelerator, "final", final_metrics, state.global_step)
    if accelerator.is_main_process:
        _export(task, accelerator, module, processor, cfg, out_dir / "final", final_metrics)
    _write_json(accelerator, results_path, results)
    accelerator.wait_for_everyone()
    pushed = True
    if cfg.push_to_hub:
        pushed = pushes.push("final", state.global_step, final=True)
        if pushes.failures:
            results["train"]["hub_push_failures"] = pushes.failures
            _write_json(accelerator, results_path, results)
            logger.warning(
                "%d Hub push(es) failed during this run (%s); everything is saved locally in %s.",
                len(pushes.failures),
                ", ".join(sorted({f["kind"] for f in pushes.failures})),
                cfg.output_dir,
            )
    accelerator.end_training()
    if not pushed:
        raise RunError(
            f"Training finished and {out_dir / 'final'} is saved, but pushing it to the Hub as "
            f"{cfg.hub_model_id} failed ({pushes.failures[-1]['kind']}: "
            f"{pushes.failures[-1]['error']}). Push it with `python scripts/push_to_hub.py "
            f"{cfg.output_dir} --repo-id {cfg.hub_model_id}`."
        )
    return results


class HubPushes:
    """Hub pushes of a run (main process only). A push that fails is logged as one line,
    recorded in ``failures`` (eval_results.json's ``train.hub_push_failures``) and never stops
    training: with ``hub_strategy: checkpoint`` the next checkpoint pushes again (offline and
    auth failures do not heal within a run, so after one of those the checkpoints stop trying);
    the final push is retried once after a network failure."""

    def __init__(self, accelerator: Accelerator, cfg: Any, task: Task) -> None:
        self.accelerator, self.cfg, self.task = accelerator, cfg, task
        self.failures: list[dict] = []
        self.given_up: str | None = None  # a failure kind that retrying cannot fix

    def push(self, subdir: str, step: int, final: bool = False) -> bool:
        """Push ``output_dir/<subdir>``; whether it went up (every rank gets True)."""
        ok = True
        if self.accelerator.is_main_process:
            ok = self._push(subdir, step, final)
        self.accelerator.wait_for_everyone()
        return ok

    def _push(self, subdir: str, step: int, final: bool) -> bool:
        from sam_hf.hub.push import describe_push_failure, push_error_kind, push_output
        from sam_hf.models.loading import first_line

        if self.given_up and not final:
            return False
        for attempt in (1, 2):
            try:
                push_output(
                    self.cfg.output_dir,
                    self.cfg.hub_model_id,
                    self.cfg.hub_private_repo,
                    cfg=self.cfg,
                    family=self.task.family,
                    model_subdir=subdir,
                )
            except Exception as e:
                kind = push_error_kind(e)
                text = first_line(e)[:200]
                self.failures.append({"step": step, "folder": subdir, "kind": kind, "error": text})
                retry = final and attempt == 1 and kind == "network"
                if final:
                    then = f"retrying in {HUB_RETRY_DELAY_S:.0f} s" if retry else "giving up"
                elif kind in ("offline", "auth"):
                    self.given_up = kind
                    then = "training goes on; no more pushes until the end of the run"
                else:
                    then = "training goes on; the next checkpoint pushes again"
                logger.warning(
                    "Hub push of %s/ at step %d failed (%s: %s); %s.",
                    subdir,
                    step,
                    kind,
                    describe_push_failure(e, self.cfg.hub_model_id) or text,
                    then,
                )
                if retry:
                    time.sleep(HUB_RETRY_DELAY_S)
                    continue
                return False
            logger.info("Pushed %s/ to the Hub as %s.", subdir, self.cfg.hub_model_id)
            return True
        return False


def before_after_table(results: dict) -> str:
    """The numeric metrics of ``initial`` (when evaluated), ``final`` and their difference, as
    the aligned text table a run ends with (the README quotes the demos from it)."""
    initial, final = results.get("initial", {}), results["final"]
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


def _export(
    task: Task,
    accelerator: Accelerator,
    module: Any,
    processor: Any,
    cfg: Any,
    target: Path,
    metrics: dict,
) -> None:
    """Write a plain-transformers model folder atomically: into ``.tmp-<name>``, then the old
    folder is renamed to ``.old-<name>`` and the new one into place (a run killed in between
    leaves ``.old-<name>``, which the next run moves back). Out of disk space: the partial
    folder is removed and a DiskFullError says how much is free and needed."""
    tmp = target.with_name(f".tmp-{target.name}")
    old = target.with_name(f".old-{target.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        task.save_pretrained(accelerator.unwrap_model(module), processor, tmp, cfg)
        save_config(cfg, tmp / "training_config.yaml")
        (tmp / "eval_results.json").write_text(json.dumps(metrics, indent=2))
    except Exception as e:
        if not checkpointing.is_disk_full(e):
            raise
        err = checkpointing.disk_full_error(
            e, f"the {target.name}/ model", target, tmp, target if target.exists() else None
        )
        shutil.rmtree(tmp, ignore_errors=True)
        raise err from e
    checkpointing.swap_folder(tmp, target, old)


def _log_metrics(accelerator: Accelerator, prefix: str, metrics: dict, step: int) -> None:
    accelerator.log(
        {f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, int | float)}, step=step
    )


def _write_json(accelerator: Accelerator, path: Path, obj: dict) -> None:
    if accelerator.is_main_process:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(obj, indent=2))
        os.replace(tmp, path)


def _fmt(d: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
