"""Temporary folders beside an output, the atomic swap into place, and what killed runs leave.

Every folder sam_hf writes is built in ``.<name>.tmp-<pid>-<random>`` next to it (same file
system) and renamed into place at the end, a previous folder first moved aside to
``.<name>.old-<pid>-<random>``. A run killed half way leaves one of those; the next run into
the same path tidies them (:func:`clean_leftovers`), leaving alone the ones whose writing
process still runs. The ownership rules for what may be replaced are in
:mod:`sam_hf.data.output`; this module only knows the names it makes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

#: Written into every folder a command creates: the command, the sam_hf version, the time and
#: each file and folder it wrote (files with size and mtime, so later edits are noticed). A
#: folder is replaced without ``--overwrite`` only when this marker shows it is the same
#: command's output, untouched and with nothing added.
OUTPUT_MARKER = ".sam_hf_output.json"

#: What follows ``.<name>.`` in the name of a leftover beside output ``<name>``.
_LEFTOVER = re.compile(r"(tmp|old)-(?:(\d+)-)?[A-Za-z0-9_]+")


def print_note(message: str) -> None:
    """The default ``notify`` of the output functions: one ``note:`` line on stderr."""
    print(f"note: {message}", file=sys.stderr)


def _default_dir_mode() -> int:
    """Permissions a plain ``mkdir`` would give (``mkdtemp`` makes private 0700 folders)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def make_temp_beside(out: Path) -> Path:
    """An empty folder ``.<name>.tmp-<pid>-<random>`` next to ``out`` (same file system, so the
    final rename is atomic; the pid tells :func:`clean_leftovers` whether its writer is alive)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    os.chmod(tmp, _default_dir_mode())
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out`` by renames only.

    A previous ``out`` is first renamed to ``.<name>.old-<pid>-<random>`` and deleted only once
    ``tmp`` is in place; a run killed between the two renames leaves that folder, which the
    next run renames back (:func:`clean_leftovers`). Callers decide whether ``out`` may go.
    """
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (leftovers name the pid that wrote them)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(
    out: str | os.PathLike[str], notify: Callable[[str], None] = print_note
) -> list[str]:
    """Tidy what killed runs left beside ``out``; return the notes (also passed to ``notify``).

    Only names this module makes are touched: ``.<name>.tmp-*`` folders (an unfinished write:
    deleted), ``.<name>.old-*`` folders (a previous output moved aside: renamed back when
    ``out`` is missing, else deleted) and ``<out>/.sam_hf_output.json.tmp-*`` files. Names
    carrying the pid of a process that is still running are left alone and reported.
    """
    out = Path(out)
    notes: list[str] = []

    def tell(message: str) -> None:
        notes.append(message)
        notify(message)

    def stale(pid: str | None, name: str) -> bool:
        if pid is None:  # written before pids were part of the name
            return True
        if int(pid) == os.getpid():  # our own write in progress
            return False
        if pid_alive(int(pid)):
            tell(f"left {out.parent / name} alone: process {pid} may still be writing it")
            return False
        return True

    prefix = f".{out.name}."
    tmps: list[Path] = []
    olds: list[Path] = []
    if out.parent.is_dir():
        for path in sorted(out.parent.iterdir()):
            if not path.name.startswith(prefix):
                continue
            m = _LEFTOVER.fullmatch(path.name[len(prefix) :])
            if m and stale(m[2], path.name):
                (tmps if m[1] == "tmp" else olds).append(path)
    if olds and not (out.exists() or out.is_symlink()):
        newest = max(olds, key=lambda p: p.stat().st_mtime_ns)
        os.rename(newest, out)
        olds.remove(newest)
        tell(f"restored {out} from {newest.name}, left by an interrupted run")
    for path in tmps + olds:
        _remove(path)
        tell(f"removed {path}, left by an interrupted run")
    if out.is_dir() and not out.is_symlink():
        for path in out.glob(f"{OUTPUT_MARKER}.tmp-*"):
            m = re.fullmatch(r"(\d+)-\w+", path.name[len(OUTPUT_MARKER) + 5 :])
            if m and stale(m[1], path.name):
                path.unlink(missing_ok=True)
    return notes
