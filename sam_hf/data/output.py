"""Output folders: who may replace what, and the one way a folder is written.

Every command that writes a folder (the converters, the COCO-text export, the synthetic
orchard, archive extraction) goes through :func:`atomic_output`: ``out`` is checked before any
work (:func:`check_output`), the folder is built in a temporary folder beside it and installed
at the end (:func:`install_output`), so a failure never leaves a partial folder. A
``.sam_hf_output.json`` marker in the folder lists the command and every file it wrote; without
``--overwrite`` only an empty folder or the same command's untouched output is replaced, and
even ``--overwrite`` never deletes a file sam_hf did not write. The temporary names and the
tidying of killed runs are in :mod:`sam_hf.data.leftovers`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sam_hf
from sam_hf.data.leftovers import (
    OUTPUT_MARKER,
    clean_leftovers,
    make_temp_beside,
    print_note,
    replace_dir,
)
from sam_hf.data.report import ConversionError

#: ``--overwrite`` of every command that writes a folder.
OVERWRITE_HELP = (
    "replace an existing output folder that this command did not write (or that holds files it"
    " did not write): only sam_hf's own outputs in it are replaced or deleted, every other file"
    " is kept, and a file in the way of an output is refused. Without it, only an empty folder"
    f" or this command's own untouched earlier output (see its {OUTPUT_MARKER}) is replaced"
)
_OVERWRITE_HINT = "pass --overwrite to replace only sam_hf's outputs in it (other files are kept)"


@dataclass(frozen=True)
class OutputRules:
    """Who writes an output folder and what it may replace there.

    ``command`` names the writer in the marker and in messages; ``flag`` is the option that
    named the folder (for messages). ``writes`` names files known in advance (``README.md``)
    so a file in their way is refused before the work. ``owned(rel)`` marks files of a folder
    without marker as this command's (the synthetic orchard, whose trees must stay
    byte-identical, recognises its files by name, and writes no marker: ``marker=False``).
    """

    command: str
    overwrite: bool = False
    flag: str = "--out"
    writes: tuple[str, ...] = ()
    owned: Callable[[str], bool] | None = None
    marker: bool = True
    notify: Callable[[str], None] = print_note


def _show(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _walk(root: Path) -> tuple[dict[str, os.stat_result], set[str]]:
    """Everything under ``root``: files (any non-folder; links are not followed) and folders,
    as posix paths relative to ``root``."""
    files: dict[str, os.stat_result] = {}
    dirs: set[str] = set()
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel) as entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    dirs.add(path)
                    stack.append(path)
                else:
                    files[path] = entry.stat(follow_symlinks=False)
    return files, dirs


def _ancestors(rel: str) -> Iterator[str]:
    parts = rel.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _write_marker(folder: Path, command: str, files: dict[str, Any], dirs: Iterable[str]) -> None:
    doc = {
        "written_by": "sam_hf",
        "command": command,
        "sam_hf_version": sam_hf.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": all(v is not None for v in files.values()),
        "files": dict(sorted(files.items())),
        "dirs": sorted(dirs),
    }
    tmp = folder / f"{OUTPUT_MARKER}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, folder / OUTPUT_MARKER)


def _file_records(files: dict[str, os.stat_result]) -> dict[str, Any]:
    return {
        rel: {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        for rel, st in files.items()
        if rel != OUTPUT_MARKER
    }


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of a folder sam_hf wrote, or None (absent or unreadable: not ours)."""
    try:
        doc = json.loads((Path(folder) / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("written_by") != "sam_hf"
        or not isinstance(doc.get("command"), str)
        or not isinstance(doc.get("files"), dict)
        or not isinstance(doc.get("dirs", []), list)
    ):
        return None
    return doc


@dataclass
class _Found:
    """What is at an output path, seen from the command about to write it."""

    kind: str  # absent | not_dir | empty | marked | unmarked
    writer: str | None = None
    complete: bool = True
    ours: set[str] = field(default_factory=set)  # files we may replace or delete
    our_dirs: set[str] = field(default_factory=set)
    extras: list[str] | None = None  # files/folders we did not write (None: not listed)
    changed: list[str] = field(default_factory=list)


def _inspect(out: Path, owned: Callable[[str], bool] | None) -> _Found:
    if not (out.exists() or out.is_symlink()):
        return _Found("absent")
    if not out.is_dir() or out.is_symlink():
        return _Found("not_dir")
    with os.scandir(out) as entries:
        if next(entries, None) is None:
            return _Found("empty")
    marker = read_marker(out)
    if marker is None and owned is None:
        return _Found("unmarked")  # not listed: a folder that is not ours may be huge
    files, dirs = _walk(out)
    listed = marker["files"] if marker else {}
    found = _Found("marked" if marker else "unmarked")
    if marker:
        found.writer = marker["command"]
        found.complete = bool(marker.get("complete", True))
        found.our_dirs = {d for d in marker.get("dirs", []) if isinstance(d, str)}
    for rel, st in files.items():
        if rel == OUTPUT_MARKER and marker:
            continue
        if rel in listed:
            found.ours.add(rel)
            rec = listed[rel]
            if not isinstance(rec, dict) or (rec.get("size"), rec.get("mtime_ns")) != (
                st.st_size,
                st.st_mtime_ns,
            ):
                found.changed.append(rel)
        elif owned is not None and owned(rel):
            found.ours.add(rel)
    for rel in found.ours | set(listed):
        found.our_dirs.update(_ancestors(rel))
    extra_files = sorted(set(files) - found.ours - ({OUTPUT_MARKER} if marker else set()))
    extra_dirs = sorted(
        d + "/"
        for d in dirs - found.our_dirs
        if not any(f.startswith(d + "/") for f in extra_files)
    )
    found.extras = extra_files + extra_dirs
    found.changed.sort()
    return found


def _reasons(found: _Found, command: str) -> list[str]:
    """Why ``command`` may not simply replace the folder; empty when it may."""
    if found.kind in ("absent", "empty"):
        return []
    if found.kind == "unmarked":
        if found.extras == []:  # every file matches what ``command`` writes (``owned``)
            return []
        return [f"it was not written by {command} (no {OUTPUT_MARKER} in it)"]
    reasons = []
    if found.writer != command:
        reasons.append(f"it was written by {found.writer}, not {command}")
    if not found.complete:
        reasons.append("an earlier run into it was interrupted")
    if found.extras:
        reasons.append(f"it holds files {found.writer} did not write ({_show(found.extras)})")
    if found.changed and found.complete:
        reasons.append(f"files changed since {found.writer} wrote them ({_show(found.changed)})")
    return reasons


def _blocked(out: Path, found: _Found, files: Iterable[str], dirs: Iterable[str]) -> list[str]:
    """Entries that are not ours and sit where this command writes (even --overwrite keeps them)."""
    blocked = set()
    for rel in files:
        if rel == OUTPUT_MARKER and found.kind == "marked":
            continue  # our own marker: rewritten last
        path = out / rel
        if rel not in found.ours and (path.exists() or path.is_symlink()):
            blocked.add(rel)
        for anc in _ancestors(rel):
            p = out / anc
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                blocked.add(anc)
    for rel in dirs:
        p = out / rel
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            blocked.add(rel)
    return sorted(blocked)


def _refuse(out: Path, detail: str) -> ConversionError:
    return ConversionError(detail, file=out, reason="output_exists", skippable=False)


def _check(
    out: Path, found: _Found, rules: OutputRules, files: Iterable[str], dirs: Iterable[str] = ()
) -> None:
    flag = rules.flag
    if found.kind == "not_dir":
        raise _refuse(out, f"exists and is not a folder; choose another {flag}")
    reasons = _reasons(found, rules.command)
    if reasons and not rules.overwrite:
        raise _refuse(
            out,
            f"refusing to replace it: {'; '.join(reasons)}; {_OVERWRITE_HINT}, or choose"
            f" another {flag}",
        )
    blocked = _blocked(out, found, files, dirs) if reasons else []
    if blocked:
        raise _refuse(
            out,
            f"refusing to overwrite {_show(blocked)}: not written by sam_hf, and --overwrite"
            f" never replaces such files; move {'it' if len(blocked) == 1 else 'them'} away or"
            f" choose another {flag}",
        )


def resolve_output(out: str | os.PathLike[str]) -> Path:
    """The absolute output path; a symlink is followed (its target is written, the link kept)."""
    out = Path(out).absolute()
    return out.resolve() if out.is_symlink() else out


def check_output(out: str | os.PathLike[str], rules: OutputRules) -> Path:
    """Before any work: may ``rules.command`` write ``out``? Returns the absolute path or raises.

    Cleans the leftovers of killed runs first (:func:`~sam_hf.data.leftovers.clean_leftovers`).
    Without ``overwrite`` an existing folder must be empty or this command's untouched output
    (its marker lists every file, with unchanged size and mtime); anything else raises
    :class:`ConversionError` (one line naming the folder, the reason and ``--overwrite``).
    With ``overwrite`` only files that would have to be replaced although sam_hf did not write
    them still raise (``rules.writes`` lets that happen before the work).
    """
    path = resolve_output(out)
    clean_leftovers(path, rules.notify)
    _check(path, _inspect(path, rules.owned), rules, rules.writes)
    return path


def install_output(tmp: Path, out: Path, rules: OutputRules) -> None:
    """Put the finished folder ``tmp`` (same file system) at ``out``, checked as in
    :func:`check_output` against what ``out`` holds now.

    ``out`` absent, empty or ours: one atomic rename (:func:`replace_dir`). With
    ``overwrite``, a folder that also holds files sam_hf did not write is never moved or
    deleted: each of our files is renamed into it (atomic per file, not as a whole), our
    files that this run no longer writes are deleted, everything else stays, and a note
    says so. The marker (``rules.marker``) lists exactly the files this run wrote.
    """
    out = resolve_output(out)
    clean_leftovers(out, rules.notify)
    if rules.marker:
        files, dirs = _walk(tmp)
        _write_marker(tmp, rules.command, _file_records(files), dirs)
    files, dirs = _walk(tmp)
    found = _inspect(out, rules.owned)
    _check(out, found, rules, files, dirs)
    if found.kind in ("absent", "empty") or found.extras == []:
        replace_dir(tmp, out)  # nothing in ``out`` but our own outputs: swap it whole
        return
    _merge_into(tmp, out, found, rules, files, dirs)


def _merge_into(
    tmp: Path, out: Path, found: _Found, rules: OutputRules, files: Iterable[str], dirs: set[str]
) -> None:
    """--overwrite into a folder holding files we did not write: merge, never move the folder."""
    new = sorted(f for f in files if f != OUTPUT_MARKER)
    if rules.marker:  # first claim what we are about to write, so a killed merge can be finished
        _write_marker(out, rules.command, dict.fromkeys(sorted(found.ours | set(new))), dirs)
    for rel in new:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, out / rel)
    for rel in sorted(found.ours - set(new)):
        (out / rel).unlink(missing_ok=True)
        for anc in reversed(list(_ancestors(rel))):  # prune folders that only held it
            if anc not in found.our_dirs or anc in dirs:
                break
            try:
                (out / anc).rmdir()
            except OSError:
                break
    if rules.marker:
        _write_marker(out, rules.command, _file_records({r: (out / r).stat() for r in new}), dirs)
    shutil.rmtree(tmp, ignore_errors=True)
    kept = found.extras if found.extras is not None else ["the files that were there"]
    rules.notify(f"--overwrite: wrote {rules.command}'s outputs into {out} and kept {_show(kept)}")


@contextlib.contextmanager
def atomic_output(out: str | os.PathLike[str], rules: OutputRules) -> Iterator[Path]:
    """Write a folder atomically: check ``out`` now, yield an empty temporary folder beside it,
    and on success install it with :func:`install_output`; on failure remove it.

    The one place output folders are written (converters, COCO-text export, synthetic orchard,
    archive extraction).
    """
    path = check_output(out, rules)
    tmp = make_temp_beside(path)
    try:
        yield tmp
        install_output(tmp, path, rules)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
