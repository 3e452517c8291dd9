"""What ``--resume_from_checkpoint`` continues from, decided before the run writes anything.

``true`` is the newest *intact* checkpoint-N of ``output_dir`` (damaged newer ones are
skipped with a warning and renamed ``checkpoint-N.damaged``); a path is that checkpoint, which
must be intact. Either way the checkpoint must have been trained with the same
result-changing settings (its ``training_config.yaml`` against this run's config), or the
resume is refused listing them: a resume that silently changed the seed or the data would not
continue that run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from sam_hf.config import ConfigError, to_dict
from sam_hf.config.validate import resume_is_latest
from sam_hf.training.checkpointing import (
    COMPLETE_MARK,
    CONFIG_NAME,
    list_checkpoints,
    verify_checkpoint,
)
from sam_hf.training.errors import CheckpointError

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
        "replay_synthetic_kind",
    }
)


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
                f"--resume_from_checkpoint true: every checkpoint in {output_dir} is damaged "
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
        older = [str(p) for p in list_checkpoints(path.parent) if p != path]
        raise CheckpointError(
            f"--resume_from_checkpoint {resume}: {problem}. Resume from another checkpoint"
            + (f" ({', '.join(older)})" if older else "")
            + " or with --resume_from_checkpoint true, which skips damaged ones."
        )
    return path, [], []


def set_aside_damaged(ckpts: list[Path]) -> None:
    """Rename skipped damaged checkpoints to ``checkpoint-N.damaged``: kept for inspection, but no
    longer candidates for ``--resume_from_checkpoint true`` or counted by ``save_total_limit``."""
    for c in ckpts:
        target = c.with_name(c.name + DAMAGED_SUFFIX)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(c, target)


def saved_config(ckpt: str | os.PathLike) -> tuple[dict | None, Path | None]:
    """The config a checkpoint was trained with: its own ``training_config.yaml``, else the
    run's ``config.yaml`` beside it."""
    ckpt = Path(ckpt)
    for p in (ckpt / CONFIG_NAME, ckpt.parent / "config.yaml"):
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


def check_resume(cfg: Any) -> tuple[Path | None, list[str], list[Path]]:
    """What ``--resume_from_checkpoint`` continues from, checked before anything is written:
    the newest intact checkpoint (or the given one, intact), trained with the same
    result-changing settings. Returns the checkpoint (None: start fresh), warnings, and
    damaged checkpoints skipped."""
    if not cfg.resume_from_checkpoint:
        return None, [], []
    path, notes, damaged = select_resume_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint)
    if path is not None:
        notes += check_resume_config(
            path, to_dict(cfg), cfg.resume_from_checkpoint, cfg.resume_ignore_config_mismatch
        )
    return path, notes, damaged
