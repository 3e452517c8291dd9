"""Before a run writes anything: the checks that fail fast, and the Accelerator.

A run that cannot finish should stop before training starts, not at its first checkpoint:
:func:`check_output_dir` (writable, not full) and :func:`check_trackers` (wandb credentials)
run before the Accelerator exists. :func:`on_main_process` runs a check on the main process
and raises its error on every rank, so a refusal stops all of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import broadcast_object_list

from sam_hf.config import ConfigError
from sam_hf.config.precision import mixed_precision
from sam_hf.training.errors import RunError


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
    """The run's Accelerator: accumulation, the precision :func:`mixed_precision` decides (the
    config's bf16/fp16, else the launcher's), the trackers, and the device the launcher gives
    (never forced to the CPU)."""
    trackers = [t for t in cfg.report_to if t != "none"]
    accelerator = Accelerator(
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
    check_ranks_joined(accelerator)
    return accelerator


def check_ranks_joined(accelerator: Accelerator) -> None:
    """A launcher started several processes but Accelerate set up no process group (CPU-only
    machine without ``ACCELERATE_USE_CPU``): each would train alone on the same output_dir."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise ConfigError(
            f"{launched} processes were launched but they did not join one distributed run "
            "(no GPU for --multi_gpu). On CPUs set ACCELERATE_USE_CPU=true (accelerate "
            "launch --multi_gpu then runs gloo ranks), or launch one process."
        )


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
