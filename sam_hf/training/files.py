"""Writing a run's files so that a kill or a full disk never leaves a half-written one.

Text files are written beside their target and renamed into place; folders (checkpoints,
``final/``, ``best/``) are built in ``.tmp-<name>`` and swapped in by renames
(:func:`swap_folder`); :func:`remove_leftovers` tidies what a killed save leaves. A save that
runs out of space becomes a :class:`~sam_hf.training.errors.DiskFullError` saying where, how
much is free and how much the previous save took.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sam_hf.training.errors import DiskFullError
from sam_hf.training.lock import LOCK_NAME


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` through ``.<name>.tmp`` and a rename: readers see the old or the new text."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, atomically (:func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _tree_size(path: Path) -> int:
    """Bytes of a file or of every file under a folder (files that vanish meanwhile: 0)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def fmt_bytes(n: float) -> str:
    """``1.5 GB``: a size for messages."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, or how torch (``[enforce fail at inline_container.cc]``) and safetensors
    (``StorageFull``) report a write that ran out of space."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(
        s in text
        for s in (
            "enforce fail at inline_container",
            "No space left on device",
            "StorageFull",
            "Disk quota exceeded",
        )
    )


def disk_full_error(
    e: BaseException, what: str, target: Path, partial: Path | None, previous: Path | None
) -> DiskFullError:
    """The message for a save that ran out of space: where, how much is free, how much the
    previous save of the same kind took (what the next one needs)."""
    where = target
    while not where.exists() and where != where.parent:
        where = where.parent
    free = fmt_bytes(shutil.disk_usage(where).free)
    if previous is not None and previous.exists():
        need = f"the previous one ({previous}) takes {fmt_bytes(_tree_size(previous))}"
    else:
        written = _tree_size(partial) if partial is not None and partial.exists() else 0
        need = f"{fmt_bytes(written)} had been written when it failed"
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    return DiskFullError(
        f"Out of disk space writing {what} to {target}: {free} free there, {need} "
        f"({first_line[:160]}). Free space or choose another --output_dir (lower "
        "save_total_limit to keep fewer checkpoints), then continue with --resume_from_checkpoint true: the "
        "last complete checkpoint is intact."
    )


def swap_folder(tmp: Path, final: Path, old: Path) -> None:
    """Put the finished ``tmp`` at ``final`` by renames; an existing ``final`` waits as ``old``
    until the new one is in place, so a kill between the renames leaves one of them whole
    (the next run restores or removes ``old``)."""
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def write_folder(target: Path, what: str, write: Callable[[Path], None]) -> None:
    """Build the folder ``target`` with ``write(tmp)`` in ``.tmp-<name>`` and swap it in
    (:func:`swap_folder`, the previous one kept as ``.old-<name>`` until then). Out of disk
    space: the partial folder is removed and a DiskFullError names ``what``, the free space
    and the size of the folder it would have replaced."""
    tmp = target.with_name(f".tmp-{target.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
    except Exception as e:
        if not is_disk_full(e):
            raise
        err = disk_full_error(e, what, target, tmp, target if target.exists() else None)
        shutil.rmtree(tmp, ignore_errors=True)
        raise err from e
    swap_folder(tmp, target, target.with_name(f".old-{target.name}"))


def remove_leftovers(output_dir: str | os.PathLike) -> list[str]:
    """Clean what killed saves leave behind; returns what was done, one line each.

    ``.tmp-*`` folders (a checkpoint or export being written), ``.*.tmp`` files (an atomic
    text write), stale lock copies and ``.write-test-*`` files are removed. An ``.old-X``
    (the previous version kept while ``X`` was replaced) is moved back when ``X`` is missing,
    else removed. Only call it while holding the run lock.
    """
    out = Path(output_dir)
    done: list[str] = []
    if not out.is_dir():
        return done
    for p in sorted(out.iterdir()):
        name = p.name
        if name.startswith(".old-"):
            target = p.with_name(name[len(".old-") :])
            if not target.exists():
                os.replace(p, target)
                done.append(f"restored {target} from {name} (a replacement was interrupted)")
                continue
        elif not (
            name.startswith((".tmp-", ".write-test-", f".{LOCK_NAME}.stale-"))
            or (name.startswith(".") and name.endswith(".tmp"))
        ):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        done.append(f"removed {p}")
    return done
