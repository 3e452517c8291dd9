"""Config parsing and validation: what a user typing flags relies on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sam_hf.config import (
    ConfigError,
    Sam2Config,
    Sam3Config,
    Sam3TrackerConfig,
    load_config,
    parse_args,
    save_config,
)
from sam_hf.config.args import SECTIONS
from sam_hf.config.parser import ConfigParser

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_then_cli_override(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 1.0e-4\nper_device_train_batch_size: 4\nreport_to: [none]\n")
    cfg = parse_args(
        Sam2Config, ["--config", str(y), "--learning_rate", "3e-5", "--freeze_image_encoder"]
    )
    assert cfg.learning_rate == pytest.approx(3e-5)
    assert cfg.per_device_train_batch_size == 4
    assert cfg.freeze_image_encoder is True


def test_equals_form_lists_and_dicts():
    cfg = parse_args(
        Sam2Config,
        [
            "--report_to=wandb,tensorboard",
            "--extra_loss_weights",
            "{boundary: 2.0}",
            "--resume_from_checkpoint",
            "true",
        ],
    )
    assert cfg.report_to == ["wandb", "tensorboard"]
    assert cfg.extra_loss_weights == {"boundary": 2.0}
    assert cfg.resume_from_checkpoint == "true"


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="Unknown config key 'learnig_rate'.*learning_rate"):
        parse_args(Sam2Config, ["--learnig_rate", "1e-3"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("num_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"num_epoch.*bad\.yaml.*num_train_epochs"):
        load_config(Sam2Config, y)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--per_device_train_batch_size", "0"], "batch_size must be >= 1"),
        (["--per_device_train_batch_size", "two"], "batch_size: expected an integer"),
        (["--learning_rate", "fast"], "learning_rate: expected a number"),
        (
            ["--prompt_type", "scribble"],
            r"prompt_type: 'scribble' is not allowed; choose one of \['point'",
        ),
        (["--freeze_image_encoder", "maybe"], "expected true or false"),
        (["--model_type", "vit_h"], "SAM1 ViT name.*sam2.1-hiera-large"),
        (["--num_points", "2"], "num_points must be 1 or 3-5"),
        (["--resolution", "1000"], "multiple of 32"),
        (["--report_to", "mlflow"], "report_to: 'mlflow' is not allowed"),
        (
            ["--resume_from_checkpoint", "true", "--init_from", "x"],
            "resume_from_checkpoint and init_from exclude each other",
        ),
        (["--fp16"], "fp16: true needs a CUDA GPU"),
    ],
)
def test_bad_values_fail_with_a_fix(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(Sam2Config, args)


def test_sam3_rejects_training_the_tracker_and_bad_resolution():
    with pytest.raises(ConfigError, match="freeze_tracker: false is not supported"):
        parse_args(Sam3Config, ["--freeze_tracker", "false"])
    with pytest.raises(ConfigError, match="multiple of SAM3's ViT patch size 14"):
        parse_args(Sam3Config, ["--resolution", "1000"])


def test_sam2_keys_are_not_sam3_keys():
    with pytest.raises(
        ConfigError, match="Unknown config key 'freeze_image_encoder'.*freeze_vision_encoder"
    ):
        parse_args(Sam3Config, ["--freeze_image_encoder", "true"])


def test_saved_config_round_trips(tmp_path):
    cfg = parse_args(Sam2Config, ["--learning_rate", "2e-5", "--report_to", "wandb"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["learning_rate"] == 2e-5
    again = load_config(Sam2Config, tmp_path / "config.yaml")
    assert again == cfg


def test_help_has_usage_config_and_every_choice(capsys):
    """--help is HfArgumentParser's: a usage line, --config, every key with its default and,
    for Literal keys, its choices."""
    with pytest.raises(SystemExit) as e:
        parse_args(Sam2Config, ["--help"], prog="recipes/sam2_mineapple.py")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: recipes/sam2_mineapple.py [-h] [--config FILE.yaml]")
    assert "--learning_rate LEARNING_RATE" in out and "(default: 0.0001)" in out
    assert "{point,box,mixed}" in out  # prompt_type's choices
    assert "reduce_lr_on_plateau" in out and "{adamw_torch,adamw_bnb_8bit}" in out
    for section in ("TrainingArgs", "Sam2PromptArgs", "HubArgs"):
        assert section in out


def test_transformers_style_command_line():
    """What users type for transformers' scripts: a bare --bf16, --no_<flag>, space-separated
    lists, a YAML mapping for lr_scheduler_kwargs, --key=value and negative numbers."""
    cfg = parse_args(
        Sam2Config,
        [
            "--config", str(ROOT / "recipes" / "sam2_demo.yaml"),
            "--per_device_train_batch_size", "2",
            "--bf16",
            "--no_eval_on_start",
            "--report_to", "tensorboard", "wandb",
            "--lr_scheduler_type", "reduce_lr_on_plateau",
            "--lr_scheduler_kwargs", "{factor: 0.3, patience: 1}",
            "--max_steps=4",
            "--adam_beta1", "-0.0",
        ],
    )  # fmt: skip
    assert cfg.per_device_train_batch_size == 2 and cfg.bf16 is True and cfg.fp16 is None
    assert cfg.eval_on_start is False and cfg.report_to == ["tensorboard", "wandb"]
    assert cfg.lr_scheduler_kwargs == {"factor": 0.3, "patience": 1}
    assert cfg.max_steps == 4 and cfg.adam_beta1 == 0.0
    assert parse_args(Sam2Config, ["--bf16", "false"]).bf16 is False


def test_old_names_say_what_they_are_called_now():
    with pytest.raises(ConfigError, match="It is called per_device_train_batch_size here"):
        parse_args(Sam2Config, ["--batch_size", "2"])
    with pytest.raises(ConfigError, match="It is called lr_scheduler_type here"):
        load_config(Sam2Config, overrides={"lr_scheduler": "cosine"})


def test_nested_guide_layout_is_mapped_with_one_line(tmp_path, capsys):
    y = tmp_path / "guide.yaml"
    y.write_text(
        "model:\n  checkpoint: sam2-tiny\n  freeze_image_encoder: true\n"
        "training:\n  batch_size: 3\n  num_epochs: 7\n  mixed_precision: bf16\n"
        "  optimizer: adamw_8bit\n  lr_scheduler: plateau\n"
        "loss:\n  focal: 10\n  bce: 1\n"
    )
    cfg = load_config(Sam2Config, y)
    assert cfg.model_name_or_path == "sam2-tiny" and cfg.freeze_image_encoder
    assert cfg.per_device_train_batch_size == 3 and cfg.num_train_epochs == 7
    assert cfg.bf16 is True and cfg.fp16 is False
    assert cfg.optim == "adamw_bnb_8bit" and cfg.lr_scheduler_type == "reduce_lr_on_plateau"
    assert cfg.loss_focal == 10 and cfg.loss_bce == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uses the nested layout; mapped" in err[0]
    assert "training.batch_size -> per_device_train_batch_size" in err[0]
    assert "loss.focal -> loss_focal" in err[0]


def test_validation_runs_for_configs_built_in_python():
    """__post_init__ validates, so a config built without the parser is checked too."""
    with pytest.raises(ConfigError, match="per_device_train_batch_size must be >= 1"):
        Sam2Config(per_device_train_batch_size=0)
    with pytest.raises(ConfigError, match="eval_strategy: steps needs eval_steps >= 1"):
        Sam2Config(eval_strategy="steps")
    with pytest.raises(ConfigError, match="cosine_with_min_lr needs exactly one of min_lr"):
        Sam2Config(lr_scheduler_type="cosine_with_min_lr")
    with pytest.raises(ConfigError, match="warmup_stable_decay needs num_decay_steps"):
        Sam2Config(lr_scheduler_type="warmup_stable_decay")


def test_shipped_recipe_yamls_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("sam2_mineapple.yaml", "sam2_demo.yaml", "pretrain/sam2_mini_shapes.yaml"):
        load_config(Sam2Config, root / name)
    for name in ("sam3_coco_text.yaml", "sam3_demo.yaml", "pretrain/sam3_mini_shapes.yaml"):
        load_config(Sam3Config, root / name)


def test_a_later_strategy_drops_an_earlier_interval(tmp_path):
    """--save_strategy no over a YAML with save_steps: the YAML's interval is dropped; an
    interval typed with a strategy that does not use it is refused, not ignored."""
    y = tmp_path / "c.yaml"
    y.write_text("save_strategy: steps\nsave_steps: 500\n")
    cfg = parse_args(Sam2Config, ["--config", str(y), "--save_strategy", "no"])
    assert cfg.save_strategy == "no" and cfg.save_steps is None
    with pytest.raises(ConfigError, match="save_steps 100 is used only with save_strategy: steps"):
        parse_args(Sam2Config, ["--save_steps", "100"])  # default strategy: epoch


def test_readme_preset_tables_are_the_ones_that_run():
    """The README's preset tables are exactly what sam_hf.config.presets applies."""
    from pathlib import Path

    from sam_hf.config.presets import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for family in ("sam2", "sam3"):
        assert markdown_table(family) in readme, f"README's {family} preset table is stale"


@pytest.mark.parametrize("config_cls", [Sam2Config, Sam3Config, Sam3TrackerConfig])
def test_every_key_is_a_command_line_flag(config_cls):
    """A key that YAML accepts is also a flag (CLI flags override YAML), and --help lists it
    under one section: the sections are the config's own mixins, so a key moved into a new
    mixin cannot fall out of the command line."""
    parser = ConfigParser(config_cls)
    flags = {a.dest for a in parser._actions} - {"help", "config"}
    keys = {f.name for f in dataclasses.fields(config_cls)} - {"family"}
    assert flags == keys
    sections = [f.name for sec in SECTIONS[config_cls] for f in dataclasses.fields(sec)]
    assert len(sections) == len(set(sections))  # no key in two sections
