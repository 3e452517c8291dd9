"""The recipes end to end on tiny random models and a few synthetic orchard images: what the
user runs, what lands in output_dir, and that it loads with plain transformers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import sam2_mineapple  # noqa: E402
import sam3_coco_text  # noqa: E402

from sam_hf.config import ConfigError  # noqa: E402


def sam2_args(out: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(ROOT / "recipes" / "sam2_demo.yaml"),
        "--model_name_or_path",
        "sam2-tiny",
        "--resolution",
        "64",
        "--dataset_path",
        str(data),
        "--synthetic_num_images",
        "10",
        "--synthetic_image_size",
        "[64, 64]",
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--max_objects_per_image",
        "4",
        *extra,
    ]


@pytest.fixture(scope="module")
def sam2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sam2")
    data = root / "data"
    results = sam2_mineapple.main(sam2_args(root / "run", data))
    return root, data, results


def test_sam2_recipe_outputs_load_with_plain_transformers(sam2_run):
    from transformers import Sam2Model, Sam2Processor

    root, _, results = sam2_run
    out = root / "run"
    on_disk = json.loads((out / "all_results.json").read_text())
    for prefix in ("initial_eval", "eval"):
        for metric in ("mean_iou", "mean_dice", "mean_boundary_f1"):
            assert f"{prefix}_{metric}" in on_disk
    assert on_disk == results
    model = Sam2Model.from_pretrained(out / "final")
    Sam2Processor.from_pretrained(out / "final")
    sd = load_file(str(out / "final" / "model.safetensors"))
    own = model.state_dict()
    assert all(torch.equal(sd[k], own[k]) for k in sd)
    assert (out / "final" / "training_config.yaml").is_file()
    assert (out / "best" / "config.json").is_file()
    assert (out / "final" / "README.md").read_text().startswith("---\n")  # its model card
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert "Resolved config" in (out / "training.log").read_text()


def test_sam2_resume_equals_straight_run(sam2_run, tmp_path):
    """4 steps straight == 2 steps, a stop, and 2 resumed steps (bit for bit)."""
    root, data, _ = sam2_run
    const = ["--lr_scheduler_type", "constant", "--warmup_steps", "0", "--eval_on_start", "false"]
    sam2_mineapple.main(sam2_args(tmp_path / "a", data, *const))
    sam2_mineapple.main(sam2_args(tmp_path / "b", data, *const, "--max_steps", "2"))
    sam2_mineapple.main(sam2_args(tmp_path / "b", data, *const, "--resume_from_checkpoint", "true"))
    a = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_an_earlier_fine_tune(sam2_run, tmp_path):
    root, data, _ = sam2_run
    res = sam2_mineapple.main(
        sam2_args(
            tmp_path / "b", data, "--init_from", str(root / "run" / "final"), "--max_steps", "1"
        )
    )
    # the new run starts from the old final weights: same initial metrics as the old final ones
    assert res["initial_eval_mean_iou"] == pytest.approx(
        json.loads((root / "run" / "eval_results.json").read_text())["eval_mean_iou"], abs=1e-9
    )
    with pytest.raises(ConfigError, match="holds a 'sam3' model"):
        folder = tmp_path / "other"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "sam3"}))
        sam2_mineapple.main(sam2_args(tmp_path / "c", data, "--init_from", str(folder)))


def test_lora_merge_and_offline_wandb(sam2_run, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import Sam2Model

    root, data, _ = sam2_run
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "lora"
    sam2_mineapple.main(
        sam2_args(
            out,
            data,
            "--use_lora",
            "true",
            "--merge_lora",
            "true",
            "--report_to",
            "wandb",
            "--max_steps",
            "2",
            "--log_images",
            "2",
        )
    )
    merged = Sam2Model.from_pretrained(out / "final")
    base = Sam2Model.from_pretrained(root / "run" / "final")  # any Sam2Model of the same shape
    adapted = PeftModel.from_pretrained(base, out / "final" / "adapter")
    assert adapted.peft_config["default"].r == 8
    # checkpoints hold adapters and heads only
    ckpt = next(out.glob("checkpoint-*"))
    assert (ckpt / "model.safetensors").stat().st_size < 0.5 * (
        out / "final" / "model.safetensors"
    ).stat().st_size
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert merged.config.model_type == "sam2"


def test_planted_hub_token_is_never_written(sam2_run, tmp_path, monkeypatch):
    root, data, _ = sam2_run
    token = "hf_PlantedTokenThatMustNeverAppear123"
    monkeypatch.setenv("HF_TOKEN", token)
    out = tmp_path / "tok"
    sam2_mineapple.main(sam2_args(out, data, "--max_steps", "2"))
    for f in out.rglob("*"):
        if f.is_file():
            assert token.encode() not in f.read_bytes(), f


def test_dataset_without_the_split_fails_before_training(sam2_run, tmp_path):
    root, data, _ = sam2_run
    with pytest.raises(ConfigError, match=r"has splits .* but the config asks for 'holdout'"):
        sam2_mineapple.main(sam2_args(tmp_path / "x", data, "--eval_split", "holdout"))
    with pytest.raises(ConfigError, match="does not exist"):
        sam2_mineapple.main(
            sam2_args(tmp_path / "y", tmp_path / "nowhere", "--synthetic_num_images", "0")
        )


def test_sam3_recipe_outputs_load_with_plain_transformers(tmp_path):
    from transformers import Sam3Model, Sam3Processor

    out = tmp_path / "run"
    results = sam3_coco_text.main(
        [
            "--config",
            str(ROOT / "recipes" / "sam3_demo.yaml"),
            "--resolution",
            "112",
            "--dataset_path",
            str(tmp_path / "data"),
            "--synthetic_num_images",
            "8",
            "--synthetic_image_size",
            "[96, 96]",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
        ]
    )
    for key in (
        "concept_recall",
        "grounding_accuracy",
        "cgF1",
        "IL_MCC",
        "pmF1",
        "mask_AP",
        "mean_iou",
    ):
        assert f"initial_eval_{key}" in results and f"eval_{key}" in results
    Sam3Model.from_pretrained(out / "final")
    processor = Sam3Processor.from_pretrained(out / "final")
    ids = processor.tokenizer("ripe red apple")["input_ids"]
    assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) == 5  # CLIP BPE: BOS, 3 words, EOS
    assert os.path.isfile(out / "best" / "model.safetensors")


@pytest.mark.parametrize("launcher", ["python", pytest.param("accelerate", marks=pytest.mark.slow)])
def test_a_config_error_prints_once_without_a_traceback(launcher, tmp_path):
    """What a user sees for a bad value: one line naming the key and the fix, no traceback,
    from ``python recipes/...`` (exit 2) and from ``accelerate launch -q`` (Accelerate turns
    every failed child into exit 1; without -q it adds its own launcher traceback)."""
    import subprocess

    recipe = [str(ROOT / "recipes" / "sam2_mineapple.py"), "--config"]
    recipe += [str(ROOT / "recipes" / "sam2_demo.yaml"), "--per_device_train_batch_size", "0"]
    recipe += ["--output_dir", str(tmp_path / "run")]
    if launcher == "python":
        cmd, code = [sys.executable, *recipe], 2
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", "1"]
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd, code = [*cmd, *recipe], 1
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == code, proc.stderr[-2000:]
    message = "Config error: per_device_train_batch_size must be >= 1, got 0."
    assert proc.stderr.count(message) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_mistyped_dataset_path_is_an_error_not_a_new_synthetic_orchard(tmp_path):
    """The demo YAML generates its data at its own dataset_path; the same YAML with another
    --dataset_path (a typo of a real dataset) must fail, naming the path and the prepare
    command, and generate nothing. Asking for generation explicitly still works."""
    typo = tmp_path / "data" / "mineaple"
    argv = ["--config", str(ROOT / "recipes" / "sam2_demo.yaml"), "--dataset_path", str(typo)]
    argv += ["--output_dir", str(tmp_path / "run")]
    with pytest.raises(ConfigError, match=f"dataset_path {typo} does not exist") as err:
        sam2_mineapple.main(argv)
    assert f"python scripts/prepare_mineapple.py --source DIR --out {typo}" in str(err.value)
    assert not typo.exists() and not (tmp_path / "run" / "final").exists()
    from sam_hf.config import Sam2Config, load_config

    explicit = {"dataset_path": str(typo), "synthetic_num_images": "4"}
    assert (
        load_config(Sam2Config, ROOT / "recipes" / "sam2_demo.yaml", explicit).synthetic_num_images
        == 4
    )
    assert load_config(Sam2Config, ROOT / "recipes" / "sam2_demo.yaml").synthetic_num_images == 60
