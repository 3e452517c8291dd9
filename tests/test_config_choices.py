"""Every choice of every config key with a fixed set of values either trains or is refused.

The cases are generated from the config dataclasses themselves (every ``Literal`` value, both
values of every ``bool``, plus the string keys with a fixed set of values), so a new choice is
covered the day it is added: an option no test runs is assumed broken. Each runnable case
trains a tiny model for 2 optimizer steps through the real recipe (data, model, loss, loop,
final evaluation, export); each refused case must fail with a ``ConfigError`` before anything
is built. The options that need companions (a frozen encoder for a cache, LoRA for a merge)
get them from ``COMPANIONS``, and every refusal states why in ``REFUSED``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Literal

import pytest

from sam_hf.config import ConfigError, Sam2Config, Sam3Config, Sam3TrackerConfig, load_config
from sam_hf.tasks.sam2 import Sam2Task
from sam_hf.tasks.sam3 import Sam3Task
from sam_hf.tasks.sam3_tracker import Sam3TrackerTask

ROOT = Path(__file__).resolve().parents[1]

import sam2_mineapple  # noqa: E402
import sam3_coco_text  # noqa: E402
import sam3_tracker_mineapple  # noqa: E402
from recipe_runs import recipe_argv, reset_accelerate_state  # noqa: E402

FAMILIES = {
    "sam2": (Sam2Config, sam2_mineapple, ROOT / "recipes" / "sam2_demo.yaml"),
    "sam3": (Sam3Config, sam3_coco_text, ROOT / "recipes" / "sam3_demo.yaml"),
    "sam3_tracker": (
        Sam3TrackerConfig,
        sam3_tracker_mineapple,
        ROOT / "recipes" / "sam3_tracker_demo.yaml",
    ),
}
TASKS = {"sam2": Sam2Task, "sam3": Sam3Task, "sam3_tracker": Sam3TrackerTask}
#: Each family's tiny model, input size and synthetic image size (the tracker's ViT takes
#: multiples of 14; the tracker demo YAML names a pretrained checkpoint, replaced here).
TINY = {
    "sam2": ({"model_name_or_path": "sam2-tiny", "resolution": 64}, "[64, 64]"),
    "sam3": ({"resolution": 112}, "[96, 96]"),
    "sam3_tracker": ({"model_name_or_path": "sam3-tracker-tiny", "resolution": 56}, "[64, 64]"),
}

# Keys that are strings in the dataclass but accept a fixed set of values.
STRING_CHOICES = {
    "cache_embeddings": ["auto", "true", "false"],
    "lora_target_groups": {
        "sam2": ["vision_encoder", "mask_decoder"],
        "sam3": ["vision_encoder", "text_encoder", "mask_decoder", "detr_decoder"],
        "sam3_tracker": ["vision_encoder", "mask_decoder"],
    },
    "report_to": ["none", "tensorboard", "wandb", "tensorboard,wandb"],
}

# What a choice needs beside it to be meaningful (the demo YAMLs jitter colours, which a cache
# refuses; a merge needs adapters; 'checkpoint' pushes are tested with a mocked Hub in
# test_hub.py, here without a push).
COMPANIONS: dict[tuple[str, Any], dict[str, Any]] = {
    ("cache_embeddings", "true"): {"color_jitter": 0.0, "freeze_image_encoder": True},
    ("merge_lora", True): {"use_lora": True},
    ("lora_target_groups", None): {"use_lora": True},
    # the base schedule evaluates and saves every step; other strategies take no *_steps
    ("eval_strategy", "epoch"): {"eval_steps": None},
    ("eval_strategy", "no"): {"eval_steps": None},
    ("save_strategy", "epoch"): {"save_steps": None},
    ("save_strategy", "no"): {"save_steps": None},
    ("lr_scheduler_type", "cosine_with_min_lr"): {"lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
    ("lr_scheduler_type", "warmup_stable_decay"): {"lr_scheduler_kwargs": {"num_decay_steps": 1}},
}
SAM3_COMPANIONS: dict[tuple[str, Any], dict[str, Any]] = {
    ("cache_embeddings", "true"): {"color_jitter": 0.0, "freeze_vision_encoder": True},
}

# Choices that must be refused before anything is built, and why.
REFUSED = {
    ("fp16", True): "fp16: true needs a CUDA GPU",
    ("freeze_tracker", False): "freeze_tracker: false is not supported",
    ("push_to_hub", True): "push_to_hub: true needs hub_model_id",
}

# Keys whose value does not matter to a 2-step offline run beyond being accepted.
NOT_RUN = {"family"}


def _bool_or_literal_choices(config_cls: type, yaml_path: Path) -> dict[str, list[Any]]:
    hints = typing.get_type_hints(config_cls)
    resolved = load_config(config_cls, yaml_path)
    out: dict[str, list[Any]] = {}
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        if f.name in NOT_RUN:
            continue
        optional_literals = [a for a in typing.get_args(tp) if typing.get_origin(a) is Literal]
        if typing.get_origin(tp) is Literal:
            out[f.name] = list(typing.get_args(tp))
        elif optional_literals:
            # `Literal[...] | None`: every named value (unset runs in every other case)
            out[f.name] = [v for lit in optional_literals for v in typing.get_args(lit)]
        elif tp is bool:
            # the demo YAML's own value runs in every other case
            out[f.name] = [not getattr(resolved, f.name)]
        elif set(typing.get_args(tp)) == {bool, type(None)}:
            # unset (None) defers to accelerate and runs in every other case
            out[f.name] = [True, False]
    return out


def cases() -> list[Any]:
    params = []
    for family, (config_cls, _, yaml) in FAMILIES.items():
        choices = _bool_or_literal_choices(config_cls, yaml)
        for key, values in STRING_CHOICES.items():
            choices[key] = values[family] if isinstance(values, dict) else values
        for key, values in sorted(choices.items()):
            for value in values:
                params.append(pytest.param(family, key, value, id=f"{family}-{key}={value}"))
    return params


def _companions(family: str, key: str, value: Any) -> dict[str, Any]:
    table = {**COMPANIONS, **(SAM3_COMPANIONS if family == "sam3" else {})}
    return dict(table.get((key, value), table.get((key, None), {})))


def _official_pt(tmp_path: Path) -> Path:
    """An official-format hiera-tiny SAM2.1 .pt (random weights, stand-in memory modules)."""
    import torch
    from test_convert_sam2 import fake_memory
    from transformers import Sam2Model

    from sam_hf.convert import sam2 as conv
    from sam_hf.convert.common import save_official
    from sam_hf.models.sam2 import tie_fourier_features

    torch.manual_seed(0)
    model = Sam2Model(conv.sam2_config("sam2.1-hiera-tiny", 64))
    tie_fourier_features(model)
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    save_official(conv.model_to_official(model, fake_memory()), path)
    return path


def _base(family: str, data: Path, out: Path) -> dict[str, Any]:
    common = {
        "dataset_path": str(data),
        "output_dir": str(out),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "eval_strategy": "steps",
        "eval_steps": 1,  # an evaluation after step 1 gives the plateau scheduler a metric
        "save_strategy": "steps",
        "save_steps": 1,
        "logging_steps": 1,
        "log_images": 1,
        "max_eval_samples": 2,
    }
    return {**common, **TINY[family][0]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """One tiny synthetic dataset per family, generated once through the recipes' own path."""
    root = tmp_path_factory.mktemp("choices")
    paths = {}
    for family, (config_cls, _, yaml) in FAMILIES.items():
        data = root / f"data_{family}"
        size = TINY[family][1]
        overrides = {
            "dataset_path": str(data),
            "synthetic_num_images": "8",
            "synthetic_image_size": size,
            "output_dir": str(root / "unused"),
        }
        task = TASKS[family]()
        task.prepare_data(load_config(config_cls, yaml, overrides))
        paths[family] = data
    return paths


@pytest.mark.slow
@pytest.mark.parametrize(("family", "key", "value"), cases())
def test_every_choice_trains_two_steps_or_is_refused(
    family, key, value, prepared, tmp_path, monkeypatch
):
    config_cls, recipe, yaml = FAMILIES[family]
    monkeypatch.setenv("WANDB_MODE", "offline")
    values = _base(family, prepared[family], tmp_path / "run")
    values.update(_companions(family, key, value))
    if key == "synthetic_kind":
        # a different kind is generated into its own folder
        values.update(
            dataset_path=str(tmp_path / "gen"), synthetic_num_images=8, synthetic_kind=value
        )
        values["synthetic_image_size"] = TINY[family][1]
    elif key == "replay_synthetic_kind":
        # replayed shapes are generated into their own folder, a quarter of the training set
        values.update(
            replay_dataset_path=str(tmp_path / "replay"), replay_fraction=0.25, **{key: value}
        )
        values["synthetic_image_size"] = TINY[family][1]
    else:
        values[key] = value
    if (key, value) == ("export_official", True):
        # exporting needs an official .pt to start from (the memory modules it carries)
        values["model_name_or_path"] = str(_official_pt(tmp_path))
    argv = recipe_argv(yaml, values)
    reason = REFUSED.get((key, value))
    reset_accelerate_state()
    try:
        if reason:
            with pytest.raises(ConfigError, match=reason.split(":")[0]):
                recipe.main(argv)
            return
        results = recipe.main(argv)
    finally:
        reset_accelerate_state()
    assert results["global_step"] == 2, results
    assert results["train_nonfinite_steps"] == 0
    final_metrics = [v for k, v in results.items() if k.startswith("eval_")]
    assert all(math.isfinite(v) for v in final_metrics if isinstance(v, float))
    final = tmp_path / "run" / "final"
    saved = final / ("adapter/adapter_config.json" if values.get("use_lora") else "config.json")
    assert saved.is_file()
    if values.get("merge_lora"):
        assert (final / "config.json").is_file()
    if values.get("export_official"):
        assert (final / "model.pt").is_file()
