"""Config validation: every impossible value or combination is refused before anything loads.

The checks read the config by attribute only (no import of the dataclasses), so ``args.py``
can call :func:`validate` from ``__post_init__`` and every message names the key and says how
to fix it. The embedding-cache rules live here too: whether caching is possible is a fact
about the settings, decided before a model exists.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path
from typing import Any

import torch

from sam_hf.config.cache_settings import check_cache_settings
from sam_hf.config.errors import ConfigError

#: The recipe that trains each family (named in messages about the wrong family).
RECIPES = {
    "sam2": "recipes/sam2_mineapple.py",
    "sam3": "recipes/sam3_coco_text.py",
    "sam3_tracker": "recipes/sam3_tracker_mineapple.py",
}
#: Families prompted by points and boxes (SAM2's prompt encoder and mask decoder): SAM2's
#: prompt keys, validation, evaluation protocol and model card apply to all of them.
GEOMETRIC_FAMILIES = ("sam2", "sam3_tracker")
#: How messages name each family.
FAMILY_NAMES = {"sam2": "SAM2", "sam3": "SAM3", "sam3_tracker": "SAM3 tracker"}


def family_name(family: str) -> str:
    """``sam3_tracker`` -> ``SAM3 tracker`` (as messages, cards and reports say it)."""
    return FAMILY_NAMES.get(family, family.upper())


#: What ``model_name_or_path`` accepts, per family (said in every "not found" message).
MODEL_SOURCES = {
    "sam2": (
        "a Hub id (e.g. facebook/sam2.1-hiera-large), a local folder with config.json "
        "(save_pretrained output), an official SAM2 .pt checkpoint, or a small random config "
        "(sam2-tiny, sam2-mini, sam2-mini-wide)"
    ),
    "sam3": (
        "a Hub id (e.g. facebook/sam3), a local folder with config.json (save_pretrained "
        "output), an official SAM3 .pt checkpoint (sam3.pt), or a small random config (sam3-tiny, "
        "sam3-mini)"
    ),
    "sam3_tracker": (
        "a Hub id (e.g. facebook/sam3: its tracker head), a local folder with config.json "
        "(Sam3TrackerModel save_pretrained output), an official SAM3 .pt checkpoint (sam3.pt: "
        "its tracker), or a small random config (sam3-tracker-tiny, sam3-tracker-mini)"
    ),
}
#: config.json ``model_type`` values whose weights each recipe's model class loads
#: (Sam3Model reads the detector out of a sam3_video config, Sam2Model a sam2_video one).
CHECKPOINT_MODEL_TYPES = {
    "sam2": ("sam2", "sam2_video"),
    "sam3": ("sam3", "sam3_video"),
    # Sam3TrackerModel reads its tracker_config out of a sam3_video config
    "sam3_tracker": ("sam3_tracker", "sam3_video"),
}
#: Prefixes of the named small random configs (models.sam2/sam3/sam3_tracker TINY_NAMES; a
#: test keeps every name covered).
_SMALL_PREFIXES = ("-tiny", "-mini")
#: Name prefixes of each family: its small random configs and its Hub ids. facebook/sam3
#: belongs to both SAM3 families (the detector and the tracker come in one checkpoint).
_NAME_PREFIXES = {
    "sam2": ("sam2-tiny", "sam2-mini", "facebook/sam2", "sam2.1-hiera", "sam2.1_hiera"),
    "sam3": ("sam3-tiny", "sam3-mini", "facebook/sam3"),
    "sam3_tracker": ("sam3-tracker-tiny", "sam3-tracker-mini", "facebook/sam3"),
}


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


#: Checkpoint folders are ``checkpoint-<global_step>`` in output_dir: transformers'
#: ``PREFIX_CHECKPOINT_DIR``.
CHECKPOINT_PREFIX = "checkpoint"


def numbered_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-<step>`` folder in ``output_dir`` (complete or not), by step."""
    root = Path(output_dir)
    found = []
    for p in root.iterdir() if root.is_dir() else ():
        m = re.fullmatch(rf"{CHECKPOINT_PREFIX}-(\d+)", p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _check_resume_path(cfg: Any) -> None:
    """``resume_from_checkpoint PATH``: the path must exist (its contents are the loop's job)."""
    value = cfg.resume_from_checkpoint
    if value is None or resume_is_latest(value) or Path(value).expanduser().exists():
        return
    root = Path(cfg.output_dir)
    found = numbered_checkpoints(root)
    have = (
        f"checkpoints in {root}: {', '.join(str(p) for _, p in found)}"
        if found
        else f"there are no checkpoint-N folders in {root}"
    )
    raise ConfigError(
        f"resume_from_checkpoint: {value} does not exist; {have}. Use "
        "--resume_from_checkpoint true for the newest one of output_dir (or a fresh start "
        "when there is none)."
    )


def resume_is_latest(value: Any) -> bool:
    """``resume_from_checkpoint: true`` (YAML bool or the string) means the newest checkpoint."""
    return str(value).strip().lower() == "true"


def check_model_name(name: Any, family: str) -> None:
    """Names that can only belong to the other family (its tiny config, its Hub ids, a sam2.1
    model type), and a local folder whose config.json says another family: refused without
    loading anything."""
    text = str(name or "").strip()
    low = text.lower()
    owners = [f for f, prefixes in _NAME_PREFIXES.items() if low.startswith(prefixes)]
    if owners and family not in owners:
        other = owners[0]
        raise ConfigError(
            f"model_name_or_path {text!r} is a {family_name(other)} checkpoint; the {family_name(family)} "
            f"recipe ({RECIPES[family]}) accepts {MODEL_SOURCES[family]}. Train it with the "
            f"{family_name(other)} recipe ({RECIPES[other]})."
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
    fam = family_name(family)
    if model_type is None:
        raise ConfigError(
            f"{source}: its config.json has no model_type, so it is not a transformers {fam} "
            f"model; the {fam} recipe accepts {MODEL_SOURCES[family]}."
        )
    owners = [f for f, types in CHECKPOINT_MODEL_TYPES.items() if model_type in types]
    if owners:
        other = owners[0]
        hint = f" Use the {family_name(other)} recipe ({RECIPES[other]}) for {family_name(other)} checkpoints."
    elif model_type in ("sam", "sam_hq"):
        hint = (
            " That is SAM1 (ViT); sam_hf fine-tunes SAM2 (Hiera, recipes/sam2_mineapple.py, e.g. "
            "facebook/sam2.1-hiera-large) and SAM3 (recipes/sam3_coco_text.py)."
        )
    elif str(model_type).startswith("sam3_tracker"):
        hint = (
            " That is SAM3's video tracker, whose memory sam_hf does not train; the SAM3 "
            f"tracker recipe ({RECIPES['sam3_tracker']}) trains its point/box head."
        )
    else:
        hint = (
            f" sam_hf trains SAM2 ({RECIPES['sam2']}), SAM3 ({RECIPES['sam3']}) and SAM3 "
            f"tracker ({RECIPES['sam3_tracker']}) checkpoints only."
        )
    raise ConfigError(
        f"{source} holds a {model_type!r} model, not {fam} (config.json model_type must be one "
        f"of {list(wanted)}).{hint}"
    )


def validate(cfg: Any) -> None:
    """Reject impossible values and combinations before anything heavy starts."""
    _check_finite(cfg)
    _validate_loop(cfg)
    _validate_schedule(cfg)
    _validate_outputs(cfg)
    _validate_lora(cfg)
    _check(cfg.resolution > 0, "resolution must be positive.")
    _check(0.0 <= cfg.hflip_prob <= 1.0, "hflip_prob must be within [0, 1].")
    _check(0.0 <= cfg.color_jitter < 1.0, "color_jitter must be within [0, 1).")
    _check(cfg.synthetic_zoom >= 1.0, "synthetic_zoom must be >= 1 (1 = the MinneApple scale).")
    if len(cfg.synthetic_image_size) != 2:
        raise ConfigError("synthetic_image_size must be [H, W].")
    _validate_replay(cfg)
    if cfg.family in RECIPES:
        check_model_name(cfg.model_name_or_path, cfg.family)
    if cfg.family in GEOMETRIC_FAMILIES:
        _validate_sam2(cfg)
    elif cfg.family == "sam3":
        _validate_sam3(cfg)


def _validate_replay(cfg: Any) -> None:
    _check(
        0.0 <= cfg.replay_fraction < 1.0,
        "replay_fraction must be within [0, 1) (0.25: a quarter of the training images are "
        "replayed).",
    )
    _check(
        cfg.replay_fraction == 0 or bool(cfg.replay_dataset_path),
        "replay_fraction > 0 needs replay_dataset_path: the prepared data to replay.",
    )
    _check(
        not cfg.replay_dataset_path or cfg.replay_fraction > 0,
        "replay_dataset_path is set but replay_fraction is 0, so nothing would be replayed: "
        "set replay_fraction (e.g. 0.25), or drop replay_dataset_path.",
    )
    _check(
        not cfg.replay_synthetic_kind or bool(cfg.replay_dataset_path),
        "replay_synthetic_kind needs replay_dataset_path: the folder to generate into.",
    )


def _validate_loop(cfg: Any) -> None:
    _check(
        cfg.max_grad_norm >= 0,
        f"max_grad_norm must be >= 0 (0 disables clipping), got {cfg.max_grad_norm}.",
    )
    _check(
        cfg.per_device_train_batch_size >= 1,
        f"per_device_train_batch_size must be >= 1, got {cfg.per_device_train_batch_size}.",
    )
    _check(
        cfg.per_device_eval_batch_size is None or cfg.per_device_eval_batch_size >= 1,
        "per_device_eval_batch_size must be >= 1 (or unset: per_device_train_batch_size).",
    )
    _check(
        cfg.gradient_accumulation_steps >= 1,
        f"gradient_accumulation_steps must be >= 1, got {cfg.gradient_accumulation_steps}.",
    )
    _check(cfg.learning_rate > 0, f"learning_rate must be > 0, got {cfg.learning_rate}.")
    _check(
        cfg.max_steps > 0 or cfg.num_train_epochs >= 1,
        "Set num_train_epochs >= 1 or max_steps > 0: nothing would be trained.",
    )
    _check(cfg.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1.")
    _check(cfg.dataloader_num_workers >= 0, "dataloader_num_workers must be >= 0.")
    _check(
        not (cfg.bf16 and cfg.fp16), "bf16 and fp16 exclude each other: set at most one to true."
    )
    if cfg.fp16:
        _check(
            torch.cuda.is_available(),
            "fp16: true needs a CUDA GPU (there is none); use --bf16 true or no mixed "
            "precision on the CPU.",
        )
    if cfg.resume_from_checkpoint is not None and cfg.init_from is not None:
        raise ConfigError(
            "resume_from_checkpoint and init_from exclude each other: resuming continues a run "
            "(optimizer, schedule, data position); init_from starts a new run from finished "
            "weights."
        )
    _check_resume_path(cfg)


def _validate_schedule(cfg: Any) -> None:
    """Evaluation/checkpoint schedule and learning-rate schedule, as TrainingArguments has them."""
    for kind in ("eval", "save"):
        strategy, steps = getattr(cfg, f"{kind}_strategy"), getattr(cfg, f"{kind}_steps")
        if strategy == "steps":
            _check(
                steps is not None and steps >= 1,
                f"{kind}_strategy: steps needs {kind}_steps >= 1 (e.g. --{kind}_steps 100).",
            )
        else:
            _check(
                steps is None,
                f"{kind}_steps {steps} is used only with {kind}_strategy: steps (it is "
                f"{strategy}); add --{kind}_strategy steps or drop {kind}_steps.",
            )
    _check(
        cfg.eval_strategy != "no" or not cfg.load_best_model_at_end,
        "load_best_model_at_end: true needs evaluations (eval_strategy steps or epoch).",
    )
    _check(
        cfg.eval_strategy != "no" or cfg.lr_scheduler_type != "reduce_lr_on_plateau",
        "lr_scheduler_type: reduce_lr_on_plateau steps on evaluations; set eval_strategy to "
        "steps or epoch.",
    )
    _check(
        cfg.warmup_steps >= 0 and (cfg.warmup_steps < 1 or float(cfg.warmup_steps).is_integer()),
        f"warmup_steps must be a whole number of steps or a fraction in (0, 1), got "
        f"{cfg.warmup_steps}.",
    )
    kwargs = cfg.lr_scheduler_kwargs
    if cfg.lr_scheduler_type == "cosine_with_min_lr":
        _check(
            ("min_lr" in kwargs) != ("min_lr_rate" in kwargs),
            "lr_scheduler_type: cosine_with_min_lr needs exactly one of min_lr or min_lr_rate "
            "in lr_scheduler_kwargs, e.g. --lr_scheduler_kwargs '{min_lr_rate: 0.1}'.",
        )
    if cfg.lr_scheduler_type == "warmup_stable_decay":
        _check(
            "num_decay_steps" in kwargs,
            "lr_scheduler_type: warmup_stable_decay needs num_decay_steps in "
            "lr_scheduler_kwargs, e.g. --lr_scheduler_kwargs '{num_decay_steps: 100}'.",
        )
    if cfg.lr_scheduler_type == "reduce_lr_on_plateau" and "mode" in kwargs:
        _check(
            kwargs["mode"] == ("max" if cfg.greater_is_better else "min"),
            "lr_scheduler_kwargs mode contradicts greater_is_better; leave mode out (it "
            "follows greater_is_better).",
        )


def _validate_outputs(cfg: Any) -> None:
    _check(
        cfg.save_total_limit is None or cfg.save_total_limit >= 1,
        "save_total_limit must be >= 1 (or unset: keep every checkpoint).",
    )
    for t in cfg.report_to:
        _check(
            t in ("none", "wandb", "tensorboard", "trackio"),
            f"report_to: {t!r} is not allowed; use wandb, tensorboard, trackio or none.",
        )
    if cfg.push_to_hub:
        _check(
            bool(cfg.hub_model_id), "push_to_hub: true needs hub_model_id (e.g. me/sam2-apples)."
        )
    _check(cfg.log_images >= 0, "log_images must be >= 0.")


def _validate_lora(cfg: Any) -> None:
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


def _validate_sam2(cfg: Any) -> None:
    """SAM2's keys, which SAM3's tracker head shares (its backbone is a ViT: patch 14)."""
    if getattr(cfg, "model_type", None) is not None:
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
    for key in ("gt_click_prob", "empty_target_prob"):
        value = getattr(cfg, key)
        _check(0.0 <= value <= 1.0, f"{key} is a probability: 0 <= {key} <= 1, got {value}.")
    _check(cfg.max_objects_per_image >= 1, "max_objects_per_image must be >= 1.")
    _check(0.0 <= cfg.mask_prompt_prob <= 1.0, "mask_prompt_prob must be within [0, 1].")
    if cfg.family == "sam3_tracker":
        _check(
            cfg.resolution % 14 == 0,
            f"resolution {cfg.resolution} must be a multiple of SAM3's ViT patch size 14 "
            "(1008 = 72 x 14 is what the checkpoint was trained at).",
        )
    else:
        _check(
            cfg.resolution % 32 == 0,
            f"resolution {cfg.resolution} must be a multiple of 32 (Hiera downsamples the "
            "input 32x); SAM2 checkpoints were trained at 1024.",
        )
    for name in ("loss_focal", "loss_dice", "loss_iou", "loss_bce"):
        _check(getattr(cfg, name) >= 0, f"{name} must be >= 0.")
    check_cache_settings(cfg)


def _validate_sam3(cfg: Any) -> None:
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
        "iabce_gamma",
        "iabce_pos_weight",
        "class_pad_queries",
        "focal_gamma",
    ):
        _check(getattr(cfg, name) >= 0, f"{name} must be >= 0, got {getattr(cfg, name)}.")
    _check(
        0.0 <= cfg.iabce_alpha <= 1.0,
        f"iabce_alpha must be within [0, 1] (soft target prob^a * IoU^(1-a)), got {cfg.iabce_alpha}.",
    )
    for name in ("presence_alpha", "focal_alpha"):
        _check(
            getattr(cfg, name) <= 1.0,
            f"{name} must be within [0, 1], or negative for no class weighting; got "
            f"{getattr(cfg, name)}.",
        )
    check_cache_settings(cfg)
