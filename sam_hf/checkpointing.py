"""Crash-safe training checkpoints on top of ``Accelerator.save_state`` / ``load_state``.

A checkpoint is written into ``checkpoints/.tmp-step-N`` and renamed to ``checkpoints/step-N``
only when complete (a rename is atomic on one filesystem); ``checkpoints/latest`` is a small
text file replaced atomically after the rename. A run killed at any instant therefore leaves
either the previous complete checkpoint or the new one, never a half-written one that
``--resume auto`` would pick.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step-(\d+)$")
#: Written last inside a checkpoint folder; its presence marks the folder complete.
COMPLETE_MARK = "trainer_state.json"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (by step)."""
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / COMPLETE_MARK).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_resume_checkpoint(output_dir: str | os.PathLike, resume: str) -> Path | None:
    """Resolve ``--resume``: ``auto`` -> newest complete checkpoint (or None), else a path."""
    if resume == "auto":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not (path / COMPLETE_MARK).is_file():
        raise FileNotFoundError(
            f"--resume {resume}: not a complete sam_hf checkpoint (no {COMPLETE_MARK} inside). "
            f"Use --resume auto or one of {[str(p) for p in list_checkpoints(output_dir)]}."
        )
    return path


def save_checkpoint(
    accelerator: Any, output_dir: str | os.PathLike, step: int, trainer_state: dict, limit: int
) -> Path:
    """Save model/optimizer/scheduler/RNG + ``trainer_state`` atomically as ``step-<step>``."""
    root = Path(output_dir) / CKPT_DIR
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _atomic_write_text(tmp / COMPLETE_MARK, json.dumps(trainer_state, indent=2))
        if final.exists():  # the same step saved twice (epoch end == save_steps boundary)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write_text(root / "latest", final.name + "\n")
        for old in list_checkpoints(output_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str | os.PathLike) -> dict:
    """Restore everything ``save_checkpoint`` saved; returns the trainer state."""
    accelerator.load_state(str(path))
    return json.loads((Path(path) / COMPLETE_MARK).read_text())
