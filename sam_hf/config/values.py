"""YAML values of a config: read, flatten the guide's nested layout, check every type.

argparse never checks its defaults, so the values a recipe YAML gives ``HfArgumentParser``
are typed here first; unknown keys fail with "did you mean" (or the key's TrainingArguments
name), and a YAML in the guide's nested layout (``model:``, ``training:``, ``loss:``
sections) is mapped to the flat keys, saying so once.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from sam_hf.config.args import CONFIG_CLASSES
from sam_hf.config.errors import ConfigError
from sam_hf.config.validate import MODEL_SOURCES, RECIPES, family_name

#: Old or guide spellings of keys that TrainingArguments names otherwise: a hint, not an alias.
RENAMED = {
    "batch_size": "per_device_train_batch_size",
    "eval_batch_size": "per_device_eval_batch_size",
    "num_epochs": "num_train_epochs",
    "epochs": "num_train_epochs",
    "lr": "learning_rate",
    "optimizer": "optim",
    "lr_scheduler": "lr_scheduler_type",
    "scheduler": "lr_scheduler_type",
    "mixed_precision": "bf16 / fp16",
    "num_workers": "dataloader_num_workers",
    "pin_memory": "dataloader_pin_memory",
    "resume": "resume_from_checkpoint",
    "hub_private": "hub_private_repo",
    "warmup_epochs": "warmup_steps (a fraction in (0, 1) of all steps)",
    "min_lr_ratio": "lr_scheduler_kwargs {min_lr_rate: ...} with cosine_with_min_lr",
    "eval_each_epoch": "eval_strategy / save_strategy",
    "checkpoint": "model_name_or_path",
    "grad_clip": "max_grad_norm",
}
#: Sections of the guide's nested YAML, and short names used inside them.
NESTED_SECTIONS = (
    "model", "data", "training", "train", "loss", "prompts", "queries", "lora", "hub",
    "evaluation", "eval", "optimizer", "scheduler", "augmentation", "logging",
)  # fmt: skip
_SECTION_KEYS = {
    "loss": {
        "focal": "loss_focal", "dice": "loss_dice", "iou": "loss_iou", "bce": "loss_bce",
        "segmentation": "loss_segmentation", "grounding": "loss_grounding",
        "attribute": "loss_attribute",
    },
    "lora": {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout"},
    "optimizer": {"name": "optim", "type": "optim", "lr": "learning_rate"},
    "scheduler": {"name": "lr_scheduler_type", "type": "lr_scheduler_type"},
}  # fmt: skip
#: Old values of renamed keys, mapped only inside the guide's nested layout.
_GUIDE_VALUES = {
    "optim": {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit"},
    "lr_scheduler_type": {"plateau": "reduce_lr_on_plateau"},
}


def _first_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


# ------------------------------------------------------------------------------ values


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML value to the field's declared type or raise a ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(args)}.")
        return value
    if tp is bool:
        return _coerce_bool(key, value)
    if tp in (int, float):
        return _coerce_number(key, value, tp)
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{key}: expected a string, got {value!r}.")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = _yaml_value(key, value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, list | tuple):
            value = [value]
        return [_coerce(f"{key}[]", v, args[0]) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = _yaml_value(key, value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping like {{name: 1.0}}, got {value!r}.")
        return {str(k): _coerce(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    return value


def _coerce_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}.")


def _coerce_number(key: str, value: Any, tp: type) -> int | float:
    what = "an integer" if tp is int else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected {what}, got {value!r}.")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {what}, got {value!r}.") from None
    if tp is float:
        return f
    if not f.is_integer():
        raise ConfigError(f"{key}: expected an integer, got {value!r}.")
    return int(f)


def _yaml_value(key: str, text: str) -> Any:
    """A YAML flow value typed on the command line (``[a, b]``, ``{name: 1.0}``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{key}: {text!r} does not parse as YAML ({problem}).") from None


# ------------------------------------------------------------------------------ YAML


def _yaml_error(path: str | os.PathLike, e: yaml.YAMLError) -> ConfigError:
    """One line naming the file, line and column of a YAML syntax error."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or " ".join(str(e).split())
    context = getattr(e, "context", None)
    cmark = getattr(e, "context_mark", None)
    if context and cmark is not None and mark is not None and cmark.line != mark.line:
        context += f" that starts at line {cmark.line + 1}, column {cmark.column + 1}"
    detail = f"{problem} ({context})" if context else problem
    return ConfigError(f"{where}: not valid YAML: {detail}.")


def read_yaml(yaml_path: str | os.PathLike) -> dict:
    """The mapping in a YAML file, or a one-line ConfigError (missing, not UTF-8, bad YAML)."""
    path = Path(yaml_path)
    if not path.is_file():
        raise ConfigError(f"Config file {yaml_path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise _yaml_error(yaml_path, e) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{yaml_path} is not UTF-8 text ({e.reason} at byte {e.start})."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{yaml_path} must hold a mapping of key: value.")
    return data


def flatten_nested(data: dict, known: set[str], source: str) -> dict:
    """Map the guide's nested layout (``training: {batch_size: 2}``) to flat keys, saying so.

    Only sections named in NESTED_SECTIONS whose value is a mapping are flattened; inside
    them, a key is taken as is when it is a config key, else through the section's short
    names, the ``<section>_<key>`` form, or the TrainingArguments rename table. A flat YAML
    is returned unchanged.
    """
    if not any(k in NESTED_SECTIONS and isinstance(v, dict) for k, v in data.items()):
        return data
    flat: dict[str, Any] = {}
    mapped: list[str] = []
    for key, value in data.items():
        if key not in NESTED_SECTIONS or not isinstance(value, dict):
            flat[key] = value
            continue
        for sub, v in value.items():
            name = _nested_name(key, str(sub), known)
            flat.update(_nested_values(name, v))
            if name != sub:
                mapped.append(f"{key}.{sub} -> {', '.join(_nested_values(name, v))}")
            elif name in known:
                mapped.append(f"{key}.{sub} -> {sub}")
    if _first_rank():
        print(
            f"Config: {source} uses the nested layout; mapped {'; '.join(mapped)}.", file=sys.stderr
        )
    return flat


def _nested_name(section: str, key: str, known: set[str]) -> str:
    if key in known:
        return key
    short = _SECTION_KEYS.get(section, {}).get(key)
    if short:
        return short
    if f"{section}_{key}" in known:
        return f"{section}_{key}"
    renamed = RENAMED.get(key, "")
    return renamed if renamed in known or key == "mixed_precision" else key


def _nested_values(name: str, value: Any) -> dict[str, Any]:
    """The flat key(s) one nested entry becomes (``mixed_precision: bf16`` -> ``bf16: true``)."""
    if name == "bf16 / fp16":
        mode = str(value).lower()
        return {"bf16": mode == "bf16", "fp16": mode == "fp16"}
    return {name: _GUIDE_VALUES.get(name, {}).get(value, value)}


def family_of(config_cls: type | None) -> str | None:
    """The model family a config class trains (its fixed ``family`` field), if any."""
    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        return None
    for f in dataclasses.fields(config_cls):
        if f.name == "family" and f.default in RECIPES:
            return str(f.default)
    return None


def unknown_key_error(key: str, known: list[str], source: str, config_cls: type) -> ConfigError:
    """'Unknown config key' with what it is called now, close spellings, or the other recipe."""
    hint = f" It is called {RENAMED[key]} here (transformers' name)." if key in RENAMED else ""
    close = difflib.get_close_matches(key, known, n=3)
    hint += f" Did you mean {', '.join(close)}?" if close and not hint else ""
    family = family_of(config_cls)
    others = [
        f
        for f in CONFIG_CLASSES
        if family and f != family and key in {x.name for x in dataclasses.fields(CONFIG_CLASSES[f])}
    ]
    other = others[0] if others else None
    if other:
        hint += (
            f" '{key}' is a key of the {family_name(other)} recipe ({RECIPES[other]}), not of the "
            f"{family_name(family)} recipe ({RECIPES[family]})."
        )
        if key == "model_type":
            hint += (
                f" The {family_name(family)} recipe has no model_type: it takes its checkpoint from "
                f"model_name_or_path, which accepts {MODEL_SOURCES[family]}."
            )
    return ConfigError(
        f"Unknown config key '{key}' (from {source}).{hint} Run with --help for all keys."
    )


def yaml_values(config_cls: type, data: dict, source: str) -> dict[str, Any]:
    """A YAML mapping (flat or nested) as typed values of ``config_cls``'s fields."""
    hints = typing.get_type_hints(config_cls)
    known = sorted(f.name for f in dataclasses.fields(config_cls))
    values = {}
    for key, value in flatten_nested(data, set(known), source).items():
        if key not in hints:
            raise unknown_key_error(str(key), known, source, config_cls)
        values[key] = _coerce(key, value, hints[key])
    return values
