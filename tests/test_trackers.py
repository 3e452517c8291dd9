"""Every tracker in ``report_to`` survives a real 3-step training and holds what was logged.

TensorBoard's hparams accept only scalars and strings, so a config with lists and mappings
crashed every ``--report_to tensorboard`` run at start; the trainer now logs non-scalar values
as their JSON text (``sam_hf.training.reporting.tracker_config``). These runs go through the SAM2 recipe on a
tiny model; the cheaper every-choice matrix (2 steps) is in test_config_choices.py.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import pytest
from recipe_runs import recipe_argv, reset_accelerate_state
from test_viz import read_wandb_history

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import sam2_mineapple  # noqa: E402


def _train(tmp_path: Path, report_to: str) -> dict:
    values = {
        "model_name_or_path": "sam2-tiny",
        "resolution": 64,
        "dataset_path": tmp_path / "data",
        "synthetic_num_images": 6,
        "synthetic_image_size": "[64, 64]",
        "output_dir": tmp_path / "run",
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
        "log_images": 1,
        "report_to": report_to,
        "wandb_project": "trackers",
    }
    reset_accelerate_state()
    try:
        return sam2_mineapple.main(recipe_argv(ROOT / "recipes" / "sam2_demo.yaml", values))
    finally:
        reset_accelerate_state()


def _tensorboard_events(run: Path, hparams: bool = False):
    """The run's TensorBoard events (``hparams=True``: the file of the hparams summary, which
    torch's ``add_hparams`` writes into a timestamped subfolder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pattern = "*/events.out.tfevents.*" if hparams else "events.out.tfevents.*"
    for path in sorted(glob.glob(str(run / "trackers" / pattern))):
        ea = EventAccumulator(path, size_guidance={"images": 0, "tensors": 0})
        ea.Reload()
        if not hparams:
            return ea
        try:
            ea.PluginTagToContent("hparams")
            return ea
        except KeyError:  # another subfolder's file
            continue
    raise AssertionError(sorted(glob.glob(str(run / "trackers" / "**"), recursive=True)))


def test_tensorboard_run_logs_config_lists_losses_and_images(tmp_path):
    pytest.importorskip("tensorboard")
    results = _train(tmp_path, "tensorboard")
    assert results["global_step"] == 3
    ea = _tensorboard_events(tmp_path / "run")
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3]
    assert "final/mean_iou" in ea.Tags()["scalars"]
    assert any(tag.startswith("eval/overlays") for tag in ea.Tags()["images"])
    # the hparams summary holds the whole config, lists as their JSON text
    plugin = _tensorboard_events(tmp_path / "run", hparams=True).PluginTagToContent("hparams")
    (session,) = [v for k, v in plugin.items() if "session_start" in k]
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(session).session_start_info
    assert json.loads(start.hparams["lora_target_groups"].string_value) == [
        "vision_encoder",
        "mask_decoder",
    ]
    assert start.hparams["max_steps"].number_value == 3


@pytest.mark.slow  # wandb starts a service process
def test_wandb_offline_and_tensorboard_together(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    results = _train(tmp_path, "tensorboard,wandb")
    wandb.teardown()  # waits until the service has written and closed the run's files
    assert results["global_step"] == 3
    assert [e.step for e in _tensorboard_events(tmp_path / "run").Scalars("train/loss")] == [
        1,
        2,
        3,
    ]
    (run_file,) = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    steps = [r["_step"] for r in read_wandb_history(run_file) if "train/loss" in r]
    assert steps == ["1", "2", "3"]
    assert b"lora_target_groups" in Path(run_file).read_bytes()  # the config went in too


def test_trackio_if_installed(tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    monkeypatch.chdir(tmp_path)
    assert _train(tmp_path, "trackio")["global_step"] == 3
