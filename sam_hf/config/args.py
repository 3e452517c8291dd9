"""Recipe configuration: flat dataclasses, YAML defaults, CLI overrides, validation up front.

A recipe's YAML sets values, any key can be overridden on the command line as ``--key value``,
and unknown keys or bad values fail *before* a model is built, with a message that names the
key and says what is allowed (the way TRL's parser behaves, but with types checked too).
The config is flat (``cfg.learning_rate``, not ``cfg.training.learning_rate``) because the
guide's YAML files are flat; the mixins below only group the keys for ``--help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message says how to fix it."""


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse's name
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainingArgs:
    """The optimisation loop, checkpoints, evaluation schedule and logging."""

    output_dir: str = _f("outputs/run", "Where checkpoints, logs, eval_results.json and final/ go.")
    seed: int = _f(42, "Seeds model init, data order, augmentation and prompts.")
    num_epochs: int = _f(1, "Epochs to train (ignored when max_steps > 0).")
    max_steps: int = _f(-1, "Optimizer steps to train; > 0 overrides num_epochs.")
    batch_size: int = _f(2, "Images per device per micro-batch.")
    eval_batch_size: int = _f(0, "Images per device at evaluation; 0 = batch_size.")
    learning_rate: float = _f(1e-4, "Peak learning rate of AdamW.")
    weight_decay: float = _f(0.01, "AdamW weight decay (never applied to biases and norms).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    optimizer: Literal["adamw", "adamw_8bit"] = _f(
        "adamw", "adamw_8bit: bitsandbytes 8-bit AdamW (pip install .[memory]; CPU and CUDA)."
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "plateau"] = _f(
        "cosine", "Schedule after warmup; plateau = ReduceLROnPlateau on the best-model metric."
    )
    warmup_epochs: float = _f(0.0, "Linear warmup length in epochs (alternative: warmup_steps).")
    warmup_steps: int = _f(0, "Linear warmup length in optimizer steps (wins over warmup_epochs).")
    min_lr_ratio: float = _f(0.0, "Cosine/linear decay floor as a fraction of learning_rate.")
    plateau_factor: float = _f(0.5, "ReduceLROnPlateau factor.")
    plateau_patience: int = _f(2, "ReduceLROnPlateau patience, in evaluations.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    mixed_precision: Literal["no", "fp16", "bf16"] = _f("no", "Autocast dtype (fp16 needs a GPU).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 disables clipping.")
    gradient_checkpointing: bool = _f(False, "Recompute block activations in backward.")
    eval_steps: int = _f(0, "Also evaluate every N optimizer steps (0: only at epoch ends).")
    eval_on_start: bool = _f(True, "Evaluate before training ('initial' in eval_results.json).")
    eval_each_epoch: bool = _f(True, "Evaluate and checkpoint at every epoch end.")
    save_steps: int = _f(0, "Also checkpoint every N optimizer steps (0: only at epoch ends).")
    save_total_limit: int = _f(3, "Step/epoch checkpoints kept (best/ and final/ are extra).")
    metric_for_best_model: str = _f("mean_iou", "Validation metric that picks best/.")
    greater_is_better: bool = _f(True, "Whether a larger metric_for_best_model is better.")
    early_stopping_patience: int = _f(0, "Stop after N evaluations without improvement (0: off).")
    resume: str | None = _f(None, "'auto' (newest complete checkpoint in output_dir) or a path.")
    resume_ignore_config_mismatch: bool = _f(
        False,
        "Resume even if the checkpoint was trained with other result-changing settings (seed, "
        "model, data, prompts, loss, optimizer...); by default --resume refuses, listing them.",
    )
    init_from: str | None = _f(
        None, "Start from the weights of an earlier fine-tune (fresh optimizer and schedule)."
    )
    num_workers: int = _f(0, "DataLoader worker processes.")
    pin_memory: bool = _f(False, "DataLoader pin_memory (useful on GPU).")
    logging_steps: int = _f(10, "Log to training.log / trackers every N optimizer steps.")
    max_nonfinite_steps: int = _f(5, "Stop after this many non-finite losses in a row.")
    report_to: list[str] = _f(["none"], "Trackers: wandb, tensorboard, trackio or none.")
    run_name: str | None = _f(None, "Run name for trackers (default: output_dir's name).")
    wandb_project: str = _f("sam_hf", "wandb project.")


@dataclass
class LoraArgs:
    """Low-rank adapters through peft (the base weights stay frozen)."""

    use_lora: bool = _f(False, "Train LoRA adapters instead of the full weights.")
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA scaling alpha.")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA path.")
    lora_target_groups: list[str] = _f(
        ["vision_encoder", "mask_decoder"],
        "Named module groups: vision_encoder, text_encoder, mask_decoder, detr_decoder.",
    )
    lora_target_regex: str | None = _f(None, "Raw regex of module names (wins over groups).")
    merge_lora: bool = _f(False, "Also write the merged plain model to final/.")


@dataclass
class HubArgs:
    """Pushing the result to the Hugging Face Hub (token from the environment or login only)."""

    push_to_hub: bool = _f(False, "Upload final/ (and its model card) when training ends.")
    hub_model_id: str | None = _f(None, "Target repo, e.g. me/sam2-apples.")
    hub_private: bool = _f(True, "Create the repo private.")
    hub_strategy: Literal["end", "checkpoint"] = _f(
        "end", "Push at the end, or at each checkpoint too."
    )
    log_images: int = _f(4, "Validation images logged with mask overlays at each eval (0: none).")


@dataclass
class DataArgs:
    """Which prepared dataset, which splits, and augmentation."""

    dataset_path: str = _f("data/mineapple", "A DatasetDict folder written by scripts/prepare_*.")
    train_split: str = _f("train", "Split to train on.")
    eval_split: str = _f("validation", "Split to evaluate on.")
    max_train_samples: int = _f(0, "Use only the first N training images (0: all).")
    max_eval_samples: int = _f(0, "Use only the first N evaluation images (0: all).")
    hflip_prob: float = _f(0.0, "Probability of a horizontal flip per training sample.")
    color_jitter: float = _f(0.0, "Brightness/contrast/saturation jitter strength (0.2 = +-20%).")
    synthetic_num_images: int = _f(
        0, "If > 0 and dataset_path is absent, generate the synthetic orchard there first."
    )
    synthetic_image_size: list[int] = _f([256, 256], "Synthetic image size [H, W].")
    synthetic_zoom: float = _f(1.0, "Orchard close-up factor (>= 1): larger, fewer apples.")
    synthetic_kind: Literal["orchard", "shapes"] = _f(
        "orchard", "What to generate: the apple orchard, or generic shapes (for pretraining)."
    )


@dataclass
class Sam2ModelArgs:
    """Which SAM2 checkpoint and what of it to train."""

    model_name_or_path: str = _f(
        "facebook/sam2.1-hiera-large", "Hub id, local HF folder, original .pt, or 'sam2-tiny'."
    )
    model_type: str | None = _f(None, "sam2.1 name (e.g. sam2.1-hiera-large) instead of a path.")
    revision: str = _f("main", "Hub revision of model_name_or_path.")
    resolution: int = _f(1024, "Square input size; SAM2 checkpoints were trained at 1024.")
    freeze_image_encoder: bool = _f(False, "Freeze the Hiera image encoder.")
    freeze_prompt_encoder: bool = _f(False, "Freeze the prompt encoder.")
    freeze_mask_decoder: bool = _f(False, "Freeze the mask decoder.")
    cache_embeddings: str = _f(
        "auto",
        "auto | true | false: compute a frozen image encoder's features once per image (and "
        "flip) and store them beside the data (auto: on when the encoder is frozen, has no "
        "LoRA and color_jitter is 0).",
    )


@dataclass
class Sam2PromptArgs:
    """Prompt simulation (sampled from the ground truth every step, never stored)."""

    prompt_type: Literal["point", "box", "mixed"] = _f("point", "Geometric prompt per object.")
    num_points: int = _f(1, "Positive points per object (1, or 3-5).")
    box_noise: float = _f(
        0.1, "Box corner noise: uniform within +-(this x box side), capped below."
    )
    box_noise_max_px: float = _f(20.0, "Cap on box noise, in pixels.")
    mask_prompt_prob: float = _f(0.0, "Probability of also giving the previous low-res mask.")
    num_correction_clicks: int = _f(0, "Iterative correction clicks from the error region.")
    max_objects_per_image: int = _f(16, "Objects prompted per image per step (random subset).")
    multimask_output: bool = _f(True, "Predict 3 masks per prompt; only the best is trained.")


@dataclass
class Sam2LossArgs:
    """Weights of the SAM2 loss terms (the guide's defaults)."""

    loss_focal: float = _f(20.0, "Sigmoid focal loss weight.")
    loss_dice: float = _f(1.0, "Dice loss weight.")
    loss_iou: float = _f(1.0, "IoU-prediction loss weight.")
    loss_bce: float = _f(5.0, "Object-score BCE weight.")
    iou_loss: Literal["l1", "mse"] = _f("l1", "IoU-prediction loss type.")
    focal_alpha: float = _f(0.25, "Focal alpha.")
    focal_gamma: float = _f(2.0, "Focal gamma.")
    extra_loss_weights: dict[str, float] = _f({}, "Weights of registered custom loss terms.")


@dataclass
class Sam2Config(
    TrainingArgs, DataArgs, Sam2ModelArgs, Sam2PromptArgs, Sam2LossArgs, LoraArgs, HubArgs
):
    """Everything recipes/sam2_mineapple.py accepts."""

    family: Literal["sam2"] = _f("sam2", "Model family (fixed by the recipe).")


@dataclass
class Sam3ModelArgs:
    """Which SAM3 checkpoint and what of it to train."""

    model_name_or_path: str = _f("facebook/sam3", "Hub id, local HF folder, or 'sam3-tiny'.")
    revision: str = _f("main", "Hub revision of model_name_or_path.")
    resolution: int = _f(
        1008, "Square input size; SAM3 was trained at 1008 (other sizes degrade it)."
    )
    freeze_vision_encoder: bool = _f(False, "Freeze the ViT vision encoder.")
    freeze_text_encoder: bool = _f(False, "Freeze the CLIP text encoder.")
    freeze_tracker: bool = _f(True, "Always true: the video tracker is not trained by this recipe.")
    noun_phrase_from_category: bool = _f(
        False, "Use the category name for objects whose noun_phrase is empty (else an error)."
    )
    cache_embeddings: str = _f(
        "auto",
        "auto | true | false: compute a frozen vision encoder's FPN features once per image (and "
        "flip) and a frozen text encoder's features once per phrase, and store them beside the "
        "data (auto: images when the vision encoder is frozen, has no LoRA and color_jitter is "
        "0; phrases when the text encoder is frozen).",
    )


@dataclass
class Sam3QueryArgs:
    """Text queries per image: positives from the annotations, sampled negatives."""

    negative_ratio: float = _f(0.2, "Negative phrases per positive phrase.")
    max_phrases_per_image: int = _f(8, "Positive phrases queried per image per step.")
    hard_negatives: bool = _f(True, "Include attribute-swapped hard negatives.")


@dataclass
class Sam3LossArgs:
    """SAM3 loss: Hungarian matching, then grouped weights (see sam_hf.losses.sam3)."""

    loss_segmentation: float = _f(1.0, "Group weight of mask focal + dice on matched queries.")
    loss_grounding: float = _f(0.5, "Group weight of classification + presence + boxes.")
    loss_attribute: float = _f(0.3, "Extra weight on attribute hard-negative queries.")
    class_loss: Literal["focal", "bce"] = _f("focal", "Per-query classification loss.")
    cost_class: float = _f(2.0, "Matcher classification cost.")
    cost_bbox: float = _f(5.0, "Matcher box L1 cost.")
    cost_giou: float = _f(2.0, "Matcher GIoU cost.")
    cost_mask: float = _f(0.0, "Matcher mask (dice) cost; 0 = off.")
    weight_class: float = _f(1.0, "Classification term weight.")
    weight_presence: float = _f(1.0, "Presence BCE term weight.")
    weight_bbox: float = _f(5.0, "Box L1 term weight.")
    weight_giou: float = _f(2.0, "GIoU term weight.")
    weight_mask_focal: float = _f(20.0, "Mask sigmoid focal term weight.")
    weight_mask_dice: float = _f(1.0, "Mask dice term weight.")
    score_threshold: float = _f(0.5, "Score above which a prediction counts (SA-Co uses 0.5).")
    negative_class_loss: bool = _f(
        True, "Apply the classification loss to negative queries too (SAM3 itself skips it)."
    )
    focal_alpha: float = _f(0.25, "Focal alpha (classification and mask focal terms).")
    focal_gamma: float = _f(2.0, "Focal gamma.")


@dataclass
class Sam3Config(
    TrainingArgs, DataArgs, Sam3ModelArgs, Sam3QueryArgs, Sam3LossArgs, LoraArgs, HubArgs
):
    """Everything recipes/sam3_coco_text.py accepts."""

    family: Literal["sam3"] = _f("sam3", "Model family (fixed by the recipe).")


_SECTIONS: dict[type, tuple[type, ...]] = {
    Sam2Config: (
        TrainingArgs,
        DataArgs,
        Sam2ModelArgs,
        Sam2PromptArgs,
        Sam2LossArgs,
        LoraArgs,
        HubArgs,
    ),
    Sam3Config: (
        TrainingArgs,
        DataArgs,
        Sam3ModelArgs,
        Sam3QueryArgs,
        Sam3LossArgs,
        LoraArgs,
        HubArgs,
    ),
}


_CONFIG_CLASSES: dict[str, type] = {"sam2": Sam2Config, "sam3": Sam3Config}
#: The recipe that trains each family (named in messages about the wrong family).
RECIPES = {"sam2": "recipes/sam2_mineapple.py", "sam3": "recipes/sam3_coco_text.py"}
#: What ``model_name_or_path`` accepts, per family (said in every "not found" message).
MODEL_SOURCES = {
    "sam2": (
        "a Hub id (e.g. facebook/sam2.1-hiera-large), a local folder with config.json "
        "(save_pretrained output), an official SAM2 .pt checkpoint, or sam2-tiny"
    ),
    "sam3": (
        "a Hub id (e.g. facebook/sam3), a local folder with config.json (save_pretrained "
        "output), or sam3-tiny"
    ),
}
#: config.json ``model_type`` values whose weights each recipe's model class loads
#: (Sam3Model reads the detector out of a sam3_video config, Sam2Model a sam2_video one).
CHECKPOINT_MODEL_TYPES = {"sam2": ("sam2", "sam2_video"), "sam3": ("sam3", "sam3_video")}
_TINY_NAMES = {"sam2": "sam2-tiny", "sam3": "sam3-tiny"}


def _family_of_class(config_cls: type | None) -> str | None:
    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        return None
    for f in dataclasses.fields(config_cls):
        if f.name == "family" and f.default in RECIPES:
            return str(f.default)
    return None


def register_config(config_cls: type, sections: tuple[type, ...]) -> None:
    """Let another family (SAM3) declare its config class and the sections shown in --help."""
    _SECTIONS[config_cls] = sections


# ----------------------------------------------------------------------------- parsing


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type or raise a ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(args)}.")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}.")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}.") from None
        if not f.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}.")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}.") from None
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


def _yaml_value(key: str, text: str) -> Any:
    """A YAML flow value typed on the command line (``[a, b]``, ``{name: 1.0}``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{key}: {text!r} does not parse as YAML ({problem}).") from None


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


def _unknown_key_error(
    key: str, known: list[str], source: str, config_cls: type | None = None
) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    family = _family_of_class(config_cls)
    other = {"sam2": "sam3", "sam3": "sam2"}.get(family or "")
    other_keys = {f.name for f in dataclasses.fields(_CONFIG_CLASSES[other])} if other else set()
    if other and key in other_keys:
        hint += (
            f" '{key}' is a key of the {other.upper()} recipe ({RECIPES[other]}), not of the "
            f"{family.upper()} recipe ({RECIPES[family]})."
        )
        if key == "model_type":
            hint += (
                f" The {family.upper()} recipe has no model_type: it takes its checkpoint from "
                f"model_name_or_path, which accepts {MODEL_SOURCES[family]}."
            )
    return ConfigError(
        f"Unknown config key '{key}' (from {source}).{hint} Run with --help for all keys."
    )


def _read_yaml(yaml_path: str | os.PathLike) -> dict:
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


def load_config(
    config_cls: type, yaml_path: str | os.PathLike | None = None, overrides: dict | None = None
) -> Any:
    """Build and validate a config from an optional YAML file and a dict of overrides."""
    hints = _type_hints(config_cls)
    known = sorted(f.name for f in dataclasses.fields(config_cls))
    values: dict[str, Any] = {}
    sources: list[tuple[str, dict]] = []
    if yaml_path is not None:
        sources.append((str(yaml_path), _read_yaml(yaml_path)))
    sources.append(("the command line", overrides or {}))
    for source, data in sources:
        for key, value in data.items():
            if key not in hints:
                raise _unknown_key_error(str(key), known, source, config_cls)
            values[key] = _coerce(key, value, hints[key])
    _synthetic_only_where_declared(sources, values)
    cfg = config_cls(**values)
    validate(cfg)
    return cfg


def _synthetic_only_where_declared(sources: list[tuple[str, dict]], values: dict) -> None:
    """Generate synthetic data only at the path declared together with ``synthetic_num_images``.

    A demo YAML names both; a ``--dataset_path`` typed on the command line (``data/mineaple``)
    must not silently become a freshly generated orchard. So when the last source that sets
    ``dataset_path`` (and no later one) sets no ``synthetic_num_images``, generation is off
    and a missing path fails with the prepare command to run.
    """
    setters = [i for i, (_, data) in enumerate(sources) if "dataset_path" in data]
    if setters and not any("synthetic_num_images" in d for _, d in sources[setters[-1] :]):
        values["synthetic_num_images"] = 0


def _help(config_cls: type) -> str:
    lines = [f"Keys of {config_cls.__name__} (set them in the YAML or as --key value):"]
    hints = _type_hints(config_cls)
    for section in _SECTIONS.get(config_cls, (config_cls,)):
        lines.append(f"\n{section.__name__}: {section.__doc__ or ''}")
        for f in dataclasses.fields(section):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            tp = getattr(hints.get(f.name), "__name__", None) or str(hints.get(f.name))
            lines.append(f"  --{f.name} ({tp}, default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_args(config_cls: type, argv: list[str] | None = None) -> Any:
    """Parse ``[--config FILE.yaml] [--key value ...]`` into a validated config.

    ``--key=value`` and ``--flag`` (meaning true, for booleans) are accepted too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(_help(config_cls))
        raise SystemExit(0)
    yaml_path = None
    overrides: dict[str, Any] = {}
    hints = _type_hints(config_cls)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"Unexpected argument {arg!r}; use --key value.")
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if hints.get(key) is bool and (nxt is None or nxt.startswith("--")):
                val = "true"
            elif nxt is None:
                raise ConfigError(f"--{key} needs a value.")
            else:
                val = nxt
                i += 1
        if key == "config":
            yaml_path = val
        else:
            overrides[key] = val
        i += 1
    return load_config(config_cls, yaml_path, overrides)


# -------------------------------------------------------------------------- validation


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _floats(key: str, value: Any) -> typing.Iterator[tuple[str, float]]:
    """Every float in a config value, with the key path that names it (``a.b``, ``a[0]``)."""
    if isinstance(value, float):
        yield key, value
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _floats(f"{key}[{i}]", v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _floats(f"{key}.{k}", v)


def _check_finite(cfg: Any) -> None:
    """No key takes inf or nan: every float field, and floats inside lists and mappings.

    (``nan`` compares false with everything, so it slips through every range check below:
    ``max_grad_norm: nan`` would silently turn clipping off, ``learning_rate: inf`` would
    train on nan weights.)
    """
    fields = dataclasses.fields(cfg) if dataclasses.is_dataclass(cfg) else ()
    for f in fields:
        for where, v in _floats(f.name, getattr(cfg, f.name)):
            _check(math.isfinite(v), f"{where} must be a finite number, got {v}.")


def _check_resume_path(cfg: Any) -> None:
    """``--resume PATH``: the path must exist (what it holds is the trainer's business)."""
    if cfg.resume is None or cfg.resume == "auto" or Path(cfg.resume).expanduser().exists():
        return
    root = Path(cfg.output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = re.fullmatch(r"step-(\d+)", p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), str(p)))
    have = (
        f"checkpoints in {root}: {', '.join(p for _, p in sorted(found))}"
        if found
        else f"there are no checkpoints in {root}"
    )
    raise ConfigError(
        f"resume: {cfg.resume} does not exist; {have}. Use --resume auto for the newest one "
        "of output_dir (or a fresh start when there is none)."
    )


def check_model_name(name: Any, family: str) -> None:
    """Names that can only belong to the other family (its tiny config, its Hub ids, a sam2.1
    model type), and a local folder whose config.json says another family: refused without
    loading anything."""
    other = "sam3" if family == "sam2" else "sam2"
    text = str(name or "").strip()
    low = text.lower()
    if (
        low == _TINY_NAMES[other]
        or low.startswith(f"facebook/{other}")
        or (other == "sam2" and low.startswith(("sam2.1-hiera", "sam2.1_hiera")))
    ):
        raise ConfigError(
            f"model_name_or_path {text!r} is a {other.upper()} checkpoint; the {family.upper()} "
            f"recipe ({RECIPES[family]}) accepts {MODEL_SOURCES[family]}. Train it with the "
            f"{other.upper()} recipe ({RECIPES[other]})."
        )
    path = Path(text).expanduser() if text else None
    if path is not None and (path / "config.json").is_file():
        try:
            raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path / 'config.json'} does not parse as JSON ({e}).") from None
        check_checkpoint_family(raw, str(path), family)


def check_checkpoint_family(raw: Any, source: str, family: str) -> None:
    """``raw`` (a config.json) must hold a model of ``family``, else a ConfigError naming the
    model_type found and the recipe that trains it."""
    wanted = CHECKPOINT_MODEL_TYPES[family]
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type in wanted:
        return
    fam = family.upper()
    if model_type is None:
        raise ConfigError(
            f"{source}: its config.json has no model_type, so it is not a transformers {fam} "
            f"model; the {fam} recipe accepts {MODEL_SOURCES[family]}."
        )
    other = "sam3" if family == "sam2" else "sam2"
    if model_type in CHECKPOINT_MODEL_TYPES[other]:
        hint = (
            f" Use the {other.upper()} recipe ({RECIPES[other]}) for {other.upper()} checkpoints."
        )
    elif model_type in ("sam", "sam_hq"):
        hint = (
            " That is SAM1 (ViT); sam_hf fine-tunes SAM2 (Hiera, recipes/sam2_mineapple.py, e.g. "
            "facebook/sam2.1-hiera-large) and SAM3 (recipes/sam3_coco_text.py)."
        )
    elif str(model_type).startswith("sam3_tracker"):
        hint = (
            " That is SAM3's video tracker, which sam_hf does not train; the SAM3 recipe "
            f"({RECIPES['sam3']}) trains the detector of a sam3 / sam3_video checkpoint."
        )
    else:
        hint = (
            f" sam_hf trains SAM2 ({RECIPES['sam2']}) and SAM3 ({RECIPES['sam3']}) "
            "checkpoints only."
        )
    raise ConfigError(
        f"{source} holds a {model_type!r} model, not {fam} (config.json model_type must be one "
        f"of {list(wanted)}).{hint}"
    )


def validate(cfg: Any) -> None:
    """Reject impossible values and combinations before anything heavy starts."""
    _check_finite(cfg)
    _check(
        cfg.max_grad_norm >= 0,
        f"max_grad_norm must be >= 0 (0 disables clipping), got {cfg.max_grad_norm}.",
    )
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}.")
    _check(cfg.eval_batch_size >= 0, "eval_batch_size must be >= 0 (0 means batch_size).")
    _check(
        cfg.gradient_accumulation_steps >= 1,
        f"gradient_accumulation_steps must be >= 1, got {cfg.gradient_accumulation_steps}.",
    )
    _check(cfg.learning_rate > 0, f"learning_rate must be > 0, got {cfg.learning_rate}.")
    _check(
        cfg.max_steps > 0 or cfg.num_epochs >= 1,
        "Set num_epochs >= 1 or max_steps > 0: nothing would be trained.",
    )
    _check(cfg.resolution > 0, "resolution must be positive.")
    _check(0.0 <= cfg.hflip_prob <= 1.0, "hflip_prob must be within [0, 1].")
    _check(0.0 <= cfg.color_jitter < 1.0, "color_jitter must be within [0, 1).")
    _check(cfg.save_total_limit >= 1, "save_total_limit must be >= 1.")
    _check(cfg.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1.")
    for t in cfg.report_to:
        _check(
            t in ("none", "wandb", "tensorboard", "trackio"),
            f"report_to: {t!r} is not allowed; use wandb, tensorboard, trackio or none.",
        )
    if cfg.mixed_precision == "fp16":
        import torch

        _check(
            torch.cuda.is_available(),
            "mixed_precision: fp16 needs a CUDA GPU (there is none); use bf16 or no on the CPU.",
        )
    if cfg.resume is not None and cfg.init_from is not None:
        raise ConfigError(
            "resume and init_from exclude each other: resume continues a run (optimizer, "
            "schedule, data position); init_from starts a new run from finished weights."
        )
    _check_resume_path(cfg)
    groups = {"vision_encoder", "text_encoder", "mask_decoder", "detr_decoder"}
    for g in cfg.lora_target_groups:
        _check(g in groups, f"lora_target_groups: {g!r} is unknown; choose from {sorted(groups)}.")
    if cfg.use_lora:
        _check(cfg.lora_r >= 1, f"lora_r must be >= 1, got {cfg.lora_r}.")
        _check(
            bool(cfg.lora_target_groups) or bool(cfg.lora_target_regex),
            "use_lora needs lora_target_groups or lora_target_regex.",
        )
    _check(not cfg.merge_lora or cfg.use_lora, "merge_lora: true needs use_lora: true.")
    if cfg.push_to_hub:
        _check(
            bool(cfg.hub_model_id), "push_to_hub: true needs hub_model_id (e.g. me/sam2-apples)."
        )
    _check(cfg.log_images >= 0, "log_images must be >= 0.")
    _check(cfg.synthetic_zoom >= 1.0, "synthetic_zoom must be >= 1 (1 = the MinneApple scale).")
    if len(cfg.synthetic_image_size) != 2:
        raise ConfigError("synthetic_image_size must be [H, W].")
    if cfg.family in RECIPES:
        check_model_name(cfg.model_name_or_path, cfg.family)
    if cfg.family == "sam2":
        _validate_sam2(cfg)
    elif cfg.family == "sam3":
        _validate_sam3(cfg)


_SAM1_NAMES = {
    "vit_h": "sam2.1-hiera-large",
    "vit_l": "sam2.1-hiera-base-plus",
    "vit_b": "sam2.1-hiera-small",
}
SAM2_MODEL_TYPES = {
    "sam2.1-hiera-tiny": "facebook/sam2.1-hiera-tiny",
    "sam2.1-hiera-small": "facebook/sam2.1-hiera-small",
    "sam2.1-hiera-base-plus": "facebook/sam2.1-hiera-base-plus",
    "sam2.1-hiera-large": "facebook/sam2.1-hiera-large",
}


def _validate_sam2(cfg: Sam2Config) -> None:
    if cfg.model_type is not None:
        if cfg.model_type in _SAM1_NAMES:
            raise ConfigError(
                f"model_type {cfg.model_type!r} is a SAM1 ViT name; SAM2 uses Hiera backbones. "
                f"Use model_type: {_SAM1_NAMES[cfg.model_type]} (or any of "
                f"{sorted(SAM2_MODEL_TYPES)})."
            )
        _check(
            cfg.model_type in SAM2_MODEL_TYPES,
            f"model_type {cfg.model_type!r} is unknown; choose one of {sorted(SAM2_MODEL_TYPES)}.",
        )
    _check(
        cfg.num_points == 1 or 3 <= cfg.num_points <= 5,
        f"num_points must be 1 or 3-5 (the official SAM2 sampling), got {cfg.num_points}.",
    )
    _check(cfg.num_correction_clicks >= 0, "num_correction_clicks must be >= 0.")
    _check(cfg.max_objects_per_image >= 1, "max_objects_per_image must be >= 1.")
    _check(0.0 <= cfg.mask_prompt_prob <= 1.0, "mask_prompt_prob must be within [0, 1].")
    _check(
        cfg.resolution % 32 == 0,
        f"resolution {cfg.resolution} must be a multiple of 32 (Hiera downsamples the input "
        "32x); SAM2 checkpoints were trained at 1024.",
    )
    for name in ("loss_focal", "loss_dice", "loss_iou", "loss_bce"):
        _check(getattr(cfg, name) >= 0, f"{name} must be >= 0.")
    from sam_hf.features.cache import check_config

    check_config(cfg)


def _validate_sam3(cfg: Sam3Config) -> None:
    _check(
        cfg.freeze_tracker,
        "freeze_tracker: false is not supported: the tracker (SAM3's video memory) is not "
        "trained by sam_hf, as in the guide; image fine-tuning never runs it.",
    )
    _check(
        cfg.resolution % 14 == 0,
        f"resolution {cfg.resolution} must be a multiple of SAM3's ViT patch size 14 "
        "(1008 = 72 x 14 is what the checkpoint was trained at).",
    )
    _check(0.0 <= cfg.negative_ratio <= 10.0, "negative_ratio must be within [0, 10].")
    _check(cfg.max_phrases_per_image >= 1, "max_phrases_per_image must be >= 1.")
    _check(0.0 < cfg.score_threshold < 1.0, "score_threshold must be within (0, 1).")
    for name in (
        "loss_segmentation",
        "loss_grounding",
        "loss_attribute",
        "cost_class",
        "cost_bbox",
        "cost_giou",
        "cost_mask",
        "weight_class",
        "weight_presence",
        "weight_bbox",
        "weight_giou",
        "weight_mask_focal",
        "weight_mask_dice",
    ):
        _check(getattr(cfg, name) >= 0, f"{name} must be >= 0, got {getattr(cfg, name)}.")
    from sam_hf.features.cache import check_config

    check_config(cfg)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as a plain dict (what is saved beside checkpoints and logged)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (reloadable with ``--config``)."""
    d = to_dict(cfg)
    d.pop("family", None)
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
