"""Crash-safe training checkpoints on top of ``Accelerator.save_state`` / ``load_state``.

A checkpoint is ``<output_dir>/checkpoint-<global_step>/`` as in transformers' Trainer. It is
written into ``.tmp-checkpoint-N`` and renamed into place only when complete (a rename is
atomic on one filesystem), so a run killed at any instant leaves either the previous complete
checkpoint or the new one, never a half-written one that ``--resume_from_checkpoint true``
would pick. Besides what ``save_state`` writes (model, optimizer, scheduler, RNG states) each
checkpoint holds the resolved config of the run that wrote it (``training_config.yaml``), the
size of every file (``manifest.json``) and, written last as the completion marker,
``trainer_state.json`` (the data position and ``log_history``). :func:`verify_checkpoint` finds
one damaged afterwards (truncated by a copy, a full disk, a broken filesystem) without
unpickling anything. ``save_total_limit`` removes the oldest checkpoints, never the one just
written nor the best one (``best_model_checkpoint``).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import yaml
from accelerate import Accelerator
from safetensors.torch import load_file

from sam_hf.config.validate import CHECKPOINT_PREFIX, numbered_checkpoints
from sam_hf.models.lora import filter_trainable, load_trainable_state_dict
from sam_hf.training.errors import CheckpointError
from sam_hf.training.files import (
    atomic_write_text,
    disk_full_error,
    is_disk_full,
    swap_folder,
)
from sam_hf.training.state import TRAINER_STATE_NAME, TrainerState

#: Written last inside a checkpoint folder; its presence marks the folder complete.
COMPLETE_MARK = TRAINER_STATE_NAME
#: ``{relative path: size in bytes}`` of every file of a checkpoint, written before the mark.
MANIFEST = "manifest.json"
#: The resolved config of the run that wrote the checkpoint.
CONFIG_NAME = "training_config.yaml"


def checkpoint_name(step: int) -> str:
    """``checkpoint-<step>``."""
    return f"{CHECKPOINT_PREFIX}-{step}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (by step)."""
    return [p for _, p in numbered_checkpoints(output_dir) if (p / COMPLETE_MARK).is_file()]


# ---------------------------------------------------------------------- integrity checks


def _check_safetensors(path: Path, size: int) -> str | None:
    """A truncated or garbled safetensors file (its header says how long the data must be)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path} is truncated ({size} bytes, not even a header)"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"{path} is truncated ({size} bytes; its header alone needs {n + 8})"
            header = json.loads(f.read(n))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        return f"{path} has a damaged header ({e.__class__.__name__})"
    if 8 + n + end != size:
        return f"{path} is truncated ({size} of {8 + n + end} bytes)"
    return None


def _check_torch_file(path: Path) -> str | None:
    """``torch.save`` files are zip archives with a CRC per record: a truncated one has no
    central directory, a damaged one fails its CRC."""
    if not zipfile.is_zipfile(path):
        return f"{path} is truncated or damaged (not a complete torch.save archive)"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"{path} is damaged ({e})"
    return f"{path} is damaged (CRC mismatch in {bad})" if bad else None


def verify_checkpoint(path: str | os.PathLike) -> str | None:
    """``None`` for an intact checkpoint, else what is wrong, naming the file.

    Checks the sizes recorded in ``manifest.json`` (checkpoints written before it existed skip
    that), the trainer state's JSON, every safetensors header against its length, and every
    ``torch.save`` archive (optimizer, scheduler, RNG states) against its CRCs. It reads each
    file once, without unpickling anything.
    """
    path = Path(path)
    try:
        json.loads((path / COMPLETE_MARK).read_text())
    except (OSError, ValueError) as e:
        return f"{path / COMPLETE_MARK} is unreadable ({e.__class__.__name__})"
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            expected = json.loads(manifest.read_text())
        except ValueError:
            return f"{manifest} is damaged"
        for rel, size in expected.items():
            f = path / rel
            if not f.is_file():
                return f"{f} is missing"
            if f.stat().st_size != size:
                return f"{f} is truncated or changed ({f.stat().st_size} of {size} bytes)"
    for f in sorted(path.rglob("*")):
        if not f.is_file() or f.name in (COMPLETE_MARK, MANIFEST, CONFIG_NAME):
            continue
        size = f.stat().st_size
        if f.suffix == ".safetensors":
            problem = _check_safetensors(f, size)
        elif f.suffix in (".bin", ".pkl", ".pt", ".pth"):
            problem = _check_torch_file(f)
        else:
            problem = None
        if problem:
            return problem
    return None


# ------------------------------------------------------------------------- save / load


def _write_marks(tmp: Path, state: TrainerState, config: dict | None) -> None:
    """The config, the size manifest and, last, the trainer state (the completion mark)."""
    if config is not None:
        d = {k: v for k, v in config.items() if k != "family"}
        atomic_write_text(tmp / CONFIG_NAME, yaml.safe_dump(d, sort_keys=False))
    sizes = {
        p.relative_to(tmp).as_posix(): p.stat().st_size
        for p in sorted(tmp.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }
    atomic_write_text(tmp / MANIFEST, json.dumps(sizes, indent=1))
    atomic_write_text(tmp / COMPLETE_MARK, state.to_json())


def rotate_checkpoints(output_dir: Path, limit: int | None, newest: Path, keep: str | None) -> None:
    """Remove the oldest checkpoints beyond ``limit`` (None: keep all), never ``newest`` (the
    one just written: after a resume from an older checkpoint, newer step numbers of the
    abandoned run may exist) nor the one named ``keep`` (the best; then one more may stay, as
    transformers does)."""
    if limit is None:
        return
    ckpts = list_checkpoints(output_dir)
    others = [p for p in ckpts if p != newest and p.name != keep]
    for stale in others[: max(0, len(ckpts) - limit)]:
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    state: TrainerState,
    limit: int | None,
    config: dict | None = None,
) -> Path:
    """Save model/optimizer/scheduler/RNG + ``state`` atomically as ``checkpoint-<global_step>``,
    with the run's ``config`` and a size manifest, then apply ``save_total_limit``. Out of disk
    space: the partial folder is removed and a DiskFullError says how much is free and needed."""
    root = Path(output_dir)
    name = checkpoint_name(state.global_step)
    final, tmp, old = root / name, root / f".tmp-{name}", root / f".old-{name}"
    previous = list_checkpoints(output_dir)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_marks(tmp, state, config)
            swap_folder(tmp, final, old)  # the same step saved again: kept until replaced
            keep = Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None
            rotate_checkpoints(root, limit, final, keep)
    except Exception as e:
        if not is_disk_full(e):
            raise
        err = disk_full_error(e, name, final, tmp, previous[-1] if previous else None)
        shutil.rmtree(tmp, ignore_errors=True)
        raise err from e
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike) -> TrainerState:
    """Restore everything ``save_checkpoint`` saved; returns the trainer state. A failure
    names the checkpoint instead of a bare library error."""
    try:
        accelerator.load_state(str(path))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"Could not load checkpoint {path}: {e.__class__.__name__}: {first[:300]}. "
            "Resume from an older checkpoint (--resume_from_checkpoint PATH)."
        ) from e
    return TrainerState.load(Path(path) / COMPLETE_MARK)


def register_lora_checkpointing(accelerator: Accelerator) -> None:
    """With LoRA, checkpoints hold the adapters and fully trained heads only (kB, not GB).

    The frozen base is rebuilt from ``model_name_or_path`` on resume, so saving it again at
    every checkpoint would only cost time and disk.
    """

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
