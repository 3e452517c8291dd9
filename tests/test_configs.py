"""Config parsing and validation: what a user typing flags relies on."""

from __future__ import annotations

import pytest
import yaml

from sam_hf.config.args import (
    ConfigError,
    Sam2Config,
    Sam3Config,
    load_config,
    parse_args,
    save_config,
)


def test_yaml_then_cli_override(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 1.0e-4\nbatch_size: 4\nreport_to: [none]\n")
    cfg = parse_args(
        Sam2Config, ["--config", str(y), "--learning_rate", "3e-5", "--freeze_image_encoder"]
    )
    assert cfg.learning_rate == pytest.approx(3e-5)
    assert cfg.batch_size == 4
    assert cfg.freeze_image_encoder is True


def test_equals_form_lists_and_dicts():
    cfg = parse_args(
        Sam2Config,
        [
            "--report_to=wandb,tensorboard",
            "--extra_loss_weights",
            "{boundary: 2.0}",
            "--resume",
            "auto",
        ],
    )
    assert cfg.report_to == ["wandb", "tensorboard"]
    assert cfg.extra_loss_weights == {"boundary": 2.0}
    assert cfg.resume == "auto"


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="Unknown config key 'learnig_rate'.*learning_rate"):
        parse_args(Sam2Config, ["--learnig_rate", "1e-3"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("num_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"num_epoch.*bad\.yaml.*num_epochs"):
        load_config(Sam2Config, y)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size", "0"], "batch_size must be >= 1"),
        (["--batch_size", "two"], "batch_size: expected an integer"),
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
        (["--resume", "auto", "--init_from", "x"], "resume and init_from exclude each other"),
        (["--mixed_precision", "fp16"], "fp16 needs a CUDA GPU"),
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


def test_help_lists_keys_with_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(Sam2Config, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--learning_rate (float, default 0.0001)" in out
    assert "--prompt_type" in out


def test_shipped_recipe_yamls_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("sam2_mineapple.yaml", "sam2_demo.yaml", "pretrain/sam2_tiny_shapes.yaml"):
        load_config(Sam2Config, root / name)
    for name in ("sam3_coco_text.yaml", "sam3_demo.yaml", "pretrain/sam3_tiny_shapes.yaml"):
        load_config(Sam3Config, root / name)
