"""Training presets: named sets of loss weights and prompt-simulation settings.

``preset: official`` trains as Meta's own fine-tuning code does (each value below names the
official file it comes from); ``preset: guide`` keeps the numbers of the fine-tuning guide
this project started from. A preset only fills the keys a user left unset (``None``): every
term stays settable from YAML or the command line, and the saved ``config.yaml`` holds the
resolved values, so a run says exactly what it trained with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sam_hf.config.errors import ConfigError

#: Preset values per family. Each entry: key -> (value, where the value comes from).
PRESETS: dict[str, dict[str, dict[str, tuple[Any, str]]]] = {
    "sam2": {
        "official": {
            "loss_focal": (20.0, "sam2 training/loss_fns.py MultiStepMultiMasksAndIous"),
            "loss_dice": (1.0, "sam2 sam2.1_hiera_b+_MOSE_finetune.yaml loss.weight_dict"),
            "loss_iou": (1.0, "sam2 sam2.1_hiera_b+_MOSE_finetune.yaml loss.weight_dict"),
            "loss_bce": (1.0, "sam2 sam2.1_hiera_b+_MOSE_finetune.yaml loss.weight_dict"),
        },
        "guide": {
            "loss_focal": (20.0, "the fine-tuning guide"),
            "loss_dice": (1.0, "the fine-tuning guide"),
            "loss_iou": (1.0, "the fine-tuning guide"),
            "loss_bce": (5.0, "the fine-tuning guide"),
        },
    },
    "sam3": {
        "official": {},
        "guide": {},
    },
}
PRESET_NAMES = ("official", "guide")


def preset_keys(family: str) -> set[str]:
    """Every key some preset of ``family`` sets (those fields default to ``None``)."""
    return {k for values in PRESETS.get(family, {}).values() for k in values}


def apply_preset(cfg: Any) -> None:
    """Fill every preset key the user left unset (``None``) from ``cfg.preset``."""
    family = getattr(cfg, "family", None)
    if family not in PRESETS:
        return
    if cfg.preset not in PRESETS[family]:
        raise ConfigError(
            f"preset must be one of {', '.join(PRESETS[family])}, got {cfg.preset!r}."
        )
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, (value, _source) in PRESETS[family][cfg.preset].items():
        if key not in names:
            raise ConfigError(f"preset {cfg.preset!r} sets unknown key {key!r} (a bug).")
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)


def preset_table(family: str) -> list[tuple[str, Any, Any, str]]:
    """(key, official value, guide value, official source) rows, for the README and --help."""
    official, guide = PRESETS[family]["official"], PRESETS[family]["guide"]
    rows = []
    for key in sorted(set(official) | set(guide)):
        o = official.get(key, (None, ""))
        g = guide.get(key, (None, ""))
        rows.append((key, o[0], g[0], o[1]))
    return rows
