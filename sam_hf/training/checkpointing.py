"""Crash-safe training checkpoints on top of ``Accelerator.save_state`` / ``load_state``, and the
run folder's lock.

A checkpoint is written into ``checkpoints/.tmp-step-N`` and renamed to ``checkpoints/step-N``
only when complete (a rename is atomic on one filesystem); ``checkpoints/latest`` is a small
text file replaced atomically after the rename. A run killed at any instant therefore leaves
either the previous complete checkpoint or the new one, never a half-written one that
``--resume_from_checkpoint true`` would pick. Each checkpoint also holds the resolved config of the run that
wrote it (``training_config.yaml``) and the size of every file (``manifest.json``), so a resume
can refuse a checkpoint of another configuration and skip one that was damaged afterwards
(truncated by a copy, a full disk, a broken filesystem) instead of failing deep inside
``load_state``.

One run at a time per ``output_dir``: :func:`acquire_run_lock` creates ``output_dir/run.lock``
(pid, host, start time) with ``O_EXCL``; a second run is refused naming the first, and the lock
of a process that died on this host is taken over with a warning.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from sam_hf.config import ConfigError
from sam_hf.config.validate import resume_is_latest

logger = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step-(\d+)$")
#: Written last inside a checkpoint folder; its presence marks the folder complete.
COMPLETE_MARK = "trainer_state.json"
#: ``{relative path: size in bytes}`` of every file of a checkpoint, written before the mark.
MANIFEST = "manifest.json"
#: The resolved config of the run that wrote the checkpoint.
CONFIG_NAME = "training_config.yaml"
LOCK_NAME = "run.lock"
DAMAGED_SUFFIX = ".damaged"

#: Config keys that may differ between a checkpoint and the run resuming it: they change how
#: long the run goes on, what is logged, evaluated or uploaded, or how fast it runs, but not the
#: weights of the steps already planned. Every other key (seed, model, data, resolution, prompt
#: simulation, queries, loss weights, optimizer and schedule, batch size and accumulation, the
#: metric that picks best/) changes results, so a checkpoint saved under another value is not
#: "this run" and ``--resume_from_checkpoint`` refuses it unless ``resume_ignore_config_mismatch`` is true. The
#: optimizer's own hyper-parameters are included although load_state restores them: a changed
#: --learning_rate would otherwise be silently ignored.
RESUME_FREE_KEYS = frozenset(
    {
        "output_dir",  # the same run may have been moved
        "resume_from_checkpoint",
        "resume_ignore_config_mismatch",
        "init_from",  # excluded with resume anyway
        "num_train_epochs",  # extending (or shortening) a run is what resume is for
        "max_steps",
        "early_stopping_patience",  # a stopping rule, like max_steps
        "eval_steps",  # evaluation/checkpoint cadence and logging: no effect on the weights
        "eval_on_start",
        "eval_strategy",
        "save_strategy",
        "load_best_model_at_end",
        "per_device_eval_batch_size",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "log_images",
        "max_nonfinite_steps",
        "report_to",
        "run_name",
        "wandb_project",
        "push_to_hub",
        "hub_model_id",
        "hub_private_repo",
        "hub_strategy",
        "dataloader_num_workers",  # speed only: samples are seeded per (seed, epoch, index)
        "dataloader_pin_memory",
        "cache_embeddings",  # cached and uncached training are bit-identical (tests/test_cache*)
        "gradient_checkpointing",  # recomputes the same activations
        # how a missing dataset_path would be generated: dataset_path itself is compared
        "synthetic_num_images",
        "synthetic_image_size",
        "synthetic_zoom",
        "synthetic_kind",
    }
)


class RunError(RuntimeError):
    """The run cannot go on; the message names the file and what to do (recipes print it as
    one line)."""


class CheckpointError(RunError):
    """A checkpoint is damaged or cannot be resumed from."""


class DiskFullError(RunError):
    """Writing a checkpoint or an export ran out of disk space."""


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
    """Resolve ``--resume_from_checkpoint``: ``true`` -> newest complete checkpoint (or None),
    else a path."""
    if resume_is_latest(resume):
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not (path / COMPLETE_MARK).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume}: not a complete sam_hf checkpoint (no {COMPLETE_MARK} inside). "
            f"Use --resume_from_checkpoint true or one of {[str(p) for p in list_checkpoints(output_dir)]}."
        )
    return path


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


def select_resume_checkpoint(
    output_dir: str | os.PathLike, resume: str
) -> tuple[Path | None, list[str], list[Path]]:
    """The checkpoint ``--resume_from_checkpoint`` continues from (verified), warnings, and the damaged
    checkpoints that were skipped.

    ``true``: the newest *intact* checkpoint (damaged newer ones are skipped, each with a
    warning naming the file), ``None`` when there is no checkpoint at all; every checkpoint
    damaged is an error (starting fresh would overwrite them). A path: that checkpoint, or an
    error naming the damaged file. Reads only.
    """
    if resume_is_latest(resume):
        notes: list[str] = []
        damaged: list[Path] = []
        for ckpt in reversed(list_checkpoints(output_dir)):
            problem = verify_checkpoint(ckpt)
            if problem is None:
                return ckpt, notes, damaged
            damaged.append(ckpt)
            notes.append(
                f"--resume_from_checkpoint true: skipping damaged checkpoint {ckpt.name} ({problem}); it is "
                f"kept as {ckpt.name}{DAMAGED_SUFFIX}."
            )
        if damaged:
            raise CheckpointError(
                f"--resume_from_checkpoint true: every checkpoint in {Path(output_dir) / CKPT_DIR} is damaged "
                f"(newest: {verify_checkpoint(damaged[0])}); nothing to resume from."
            )
        return None, notes, damaged
    try:
        path = find_resume_checkpoint(output_dir, resume)
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None
    assert path is not None
    problem = verify_checkpoint(path)
    if problem:
        older = [str(p) for p in list_checkpoints(path.parent.parent) if p != path]
        raise CheckpointError(
            f"--resume_from_checkpoint {resume}: {problem}. Resume from another checkpoint"
            + (f" ({', '.join(older)})" if older else "")
            + " or with --resume_from_checkpoint true, which skips damaged ones."
        )
    return path, [], []


def set_aside_damaged(ckpts: list[Path]) -> None:
    """Rename skipped damaged checkpoints to ``step-N.damaged``: kept for inspection, but no
    longer candidates for ``--resume_from_checkpoint true`` or counted by ``save_total_limit``."""
    for c in ckpts:
        target = c.with_name(c.name + DAMAGED_SUFFIX)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(c, target)


# ----------------------------------------------------------------------- config checks


def saved_config(ckpt: str | os.PathLike) -> tuple[dict | None, Path | None]:
    """The config a checkpoint was trained with: its own ``training_config.yaml``, else (older
    checkpoints) the run's ``config.yaml`` beside ``checkpoints/``."""
    ckpt = Path(ckpt)
    for p in (ckpt / CONFIG_NAME, ckpt.parent.parent / "config.yaml"):
        if p.is_file():
            return yaml.safe_load(p.read_text()) or {}, p
    return None, None


def config_differences(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, current)}`` for the result-changing keys (all but
    :data:`RESUME_FREE_KEYS`) set differently; keys one side lacks (another sam_hf version)
    are not compared."""
    now = yaml.safe_load(yaml.safe_dump(current, sort_keys=False))  # the form it is saved in
    return {
        k: (saved[k], now[k])
        for k in saved
        if k in now and k not in RESUME_FREE_KEYS and k != "family" and saved[k] != now[k]
    }


def check_resume_config(ckpt: Path, current: dict, resume: str, ignore: bool) -> list[str]:
    """Refuse (ConfigError) a checkpoint trained with other result-changing settings, listing
    them; with ``ignore`` return the same list as a warning instead."""
    saved, source = saved_config(ckpt)
    if saved is None:
        return [
            f"--resume_from_checkpoint {resume}: {ckpt} has no saved config; its settings are not checked."
        ]
    diffs = config_differences(saved, current)
    if not diffs:
        return []
    listed = "; ".join(
        f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in diffs.items()
    )
    if ignore:
        return [
            f"--resume_from_checkpoint {resume}: {ckpt} was trained with other settings ({listed}); resuming "
            "anyway (resume_ignore_config_mismatch)."
        ]
    raise ConfigError(
        f"--resume_from_checkpoint {resume}: checkpoint {ckpt} was trained with other settings (from {source}): "
        f"{listed}. Resuming would not continue that run. Use the checkpoint's values, another "
        "--output_dir, or --resume_ignore_config_mismatch true to resume anyway."
    )


# ------------------------------------------------------------------------- disk space


def _tree_size(path: Path) -> int:
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


# ------------------------------------------------------------------------- save / load


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


def save_checkpoint(
    accelerator: Any,
    output_dir: str | os.PathLike,
    step: int,
    trainer_state: dict,
    limit: int,
    config: dict | None = None,
) -> Path:
    """Save model/optimizer/scheduler/RNG + ``trainer_state`` atomically as ``step-<step>``,
    with the run's ``config`` and a size manifest. Out of disk space: the partial folder is
    removed and a :class:`DiskFullError` says how much is free and needed."""
    root = Path(output_dir) / CKPT_DIR
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    old = root / f".old-step-{step}"
    previous = list_checkpoints(output_dir)
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if config is not None:
                d = {k: v for k, v in config.items() if k != "family"}
                _atomic_write_text(tmp / CONFIG_NAME, yaml.safe_dump(d, sort_keys=False))
            sizes = {
                p.relative_to(tmp).as_posix(): p.stat().st_size
                for p in sorted(tmp.rglob("*"))
                if p.is_file() and not p.name.startswith(".")
            }
            _atomic_write_text(tmp / MANIFEST, json.dumps(sizes, indent=1))
            _atomic_write_text(tmp / COMPLETE_MARK, json.dumps(trainer_state, indent=2))
            swap_folder(tmp, final, old)  # the same step saved again: kept until replaced
            _atomic_write_text(root / "latest", final.name + "\n")
            # the oldest beyond the limit go, never the one just written (after a resume from
            # an older checkpoint, newer step numbers of the abandoned run may exist)
            ckpts = list_checkpoints(output_dir)
            others = [p for p in ckpts if p != final]
            for stale in others[: max(0, len(ckpts) - limit)]:
                shutil.rmtree(stale, ignore_errors=True)
    except Exception as e:
        if not is_disk_full(e):
            raise
        err = disk_full_error(
            e, f"checkpoint step-{step}", final, tmp, previous[-1] if previous else None
        )
        shutil.rmtree(tmp, ignore_errors=True)
        raise err from e
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str | os.PathLike) -> dict:
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
    state = json.loads((Path(path) / COMPLETE_MARK).read_text())
    return state


# ------------------------------------------------------------------ leftovers of crashes


def remove_leftovers(output_dir: str | os.PathLike) -> list[str]:
    """Clean what killed saves leave behind; returns what was done, one line each.

    ``.tmp-*`` folders (a checkpoint or export being written), ``.*.tmp`` files (an atomic
    text write), stale lock copies and ``.write-test-*`` files are removed. An ``.old-X``
    (the previous version kept while ``X`` was replaced) is moved back when ``X`` is missing,
    else removed. Only call it while holding the run lock.
    """
    out = Path(output_dir)
    done: list[str] = []
    for d in (out, out / CKPT_DIR):
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
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


# -------------------------------------------------------------------------------- lock


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
