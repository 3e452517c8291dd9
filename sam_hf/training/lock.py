"""One run at a time per ``output_dir``: the run folder's lock.

:func:`acquire_run_lock` creates ``output_dir/run.lock`` (pid, host, start time) with
``O_EXCL``; a second run is refused naming the first, and the lock of a process that died on
this host is taken over with a warning. Two runs writing one folder would interleave their
checkpoints and results, and neither could be resumed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from sam_hf.config import ConfigError

LOCK_NAME = "run.lock"


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def pid_alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` of this host still runs (and is the one that started at
    ``started``: a later process that reused the pid, or a zombie, does not count)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    if fields[0] in ("Z", "X"):
        return False
    boot = _boot_time()
    if started is not None and boot is not None:
        try:
            proc_start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        except (ValueError, IndexError, OSError):
            return True
        if proc_start > started + 2.0:  # pid reused by a process that started later
            return False
    return True


def _read_lock(path: Path, wait_s: float = 1.0) -> dict | None:
    """The holder's record; ``{}`` when unreadable (being written, or garbage), ``None`` when
    the lock is gone."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
            if isinstance(info, dict) and "pid" in info:
                return info
        except ValueError:
            pass
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.05)


def _describe(info: dict) -> str:
    return (
        f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
        if info
        else "an unreadable lock"
    )


class RunLock:
    """``output_dir/run.lock`` while this process runs there (see :func:`acquire_run_lock`)."""

    def __init__(self, path: Path, info: dict, notes: list[str]) -> None:
        self.path, self.info, self.notes = path, info, notes

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        holder = _read_lock(self.path, wait_s=0)
        if (
            holder
            and holder.get("pid") == self.info["pid"]
            and holder.get("start") == self.info["start"]
            and holder.get("host") == self.info["host"]
        ):
            self.path.unlink(missing_ok=True)


def acquire_run_lock(output_dir: str | os.PathLike) -> RunLock:
    """Create ``output_dir/run.lock`` atomically (``O_EXCL``) with this process's pid, host and
    start time, or raise a ConfigError naming the run that holds it.

    A lock whose process is gone (same host, pid no longer running or reused since) is stale:
    it is taken over and ``notes`` says whose it was. A lock of another host cannot be checked
    and is never taken over.
    """
    path = Path(output_dir) / LOCK_NAME
    host = socket.gethostname()
    now = time.time()
    info = {
        "pid": os.getpid(),
        "host": host,
        "start": now,
        "started": datetime.fromtimestamp(now, timezone.utc)
        .astimezone()
        .isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
    notes: list[str] = []
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:  # released meanwhile
                continue
            if holder:
                stale = holder.get("host") == host and not pid_alive(
                    int(holder.get("pid", -1)), holder.get("start")
                )
            else:  # unreadable: stale once older than a write could take
                try:
                    stale = time.time() - path.stat().st_mtime > 10
                except FileNotFoundError:
                    continue
            if not stale:
                raise ConfigError(
                    f"output_dir {output_dir} is in use by another run: {_describe(holder)} "
                    f"(lock file {path}). Wait for it to finish or choose another --output_dir; "
                    f"if that run is gone (its machine crashed), delete {path}."
                ) from None
            aside = path.with_name(f".{LOCK_NAME}.stale-{os.getpid()}")
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                continue
            moved = _read_lock(aside, wait_s=0)
            if moved != holder:  # another run took the stale lock over first: give it back
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                continue
            aside.unlink(missing_ok=True)
            notes.append(
                f"Took over the stale lock {path} of {_describe(holder)}: that process is no "
                "longer running (it was killed or crashed)."
            )
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info, indent=1))
            f.flush()
            os.fsync(f.fileno())
        return RunLock(path, info, notes)
    raise ConfigError(f"Could not lock output_dir {output_dir} ({path} keeps changing).")
