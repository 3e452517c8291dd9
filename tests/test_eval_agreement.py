"""The SAM3 trainer's final evaluation and ``scripts/evaluate.py sam3`` on its ``final/`` agree.

A short fine-tune of the shipped tiny SAM3 with the demo YAML (which sets a non-default seed,
``negative_ratio`` and ``hard_negatives``), then ``evaluate.py sam3`` on the same ``final/``,
data and split with no other option: both build their (image, phrase) pairs with
``sam_hf.data.views.sam3_eval_pairs`` and score them with ``Sam3Task.compute_metrics``, so the pairs
are the same and every metric is equal exactly (not approximately).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from scripts_loader import load_script

from sam_hf.eval.settings import EvalSettings, resolve_settings
from sam_hf.tasks.sam3 import Sam3Task

ROOT = Path(__file__).resolve().parents[1]

import sam3_coco_text  # noqa: E402

evaluate_cli = load_script("evaluate")


def test_trainer_final_eval_equals_evaluate_sam3_on_final(tmp_path, monkeypatch):
    scored: list[list[dict]] = []  # the records behind every compute_metrics call, in order
    original = Sam3Task.compute_metrics

    def compute_metrics(self, records):
        scored.append(records)
        return original(self, records)

    monkeypatch.setattr(Sam3Task, "compute_metrics", compute_metrics)
    data, run = tmp_path / "data", tmp_path / "run"
    results = sam3_coco_text.main(
        [
            "--config", str(ROOT / "recipes" / "sam3_demo.yaml"),
            "--dataset_path", str(data),
            "--synthetic_num_images", "20",  # 5 validation images, about 40 pairs
            "--synthetic_image_size", "[80, 80]",
            "--output_dir", str(run),
            "--max_steps", "1",
            "--per_device_train_batch_size", "2",  # evaluated 2 images a batch; evaluate.py takes 4
            "--eval_on_start", "false",
            "--log_images", "0",
            "--score_threshold", "0.3",  # not the metrics' 0.5: both sides must apply it
        ]
    )  # fmt: skip
    trainer = {k.removeprefix("eval_"): v for k, v in results.items() if k.startswith("eval_")}
    trainer_records = scored[-1]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # the demo's pair settings differ from the recipes' defaults the evaluator used to assume
    assert (cfg["seed"], cfg["negative_ratio"], cfg["hard_negatives"]) == (0, 0.5, False)

    monkeypatch.chdir(tmp_path)  # the report goes to the default outputs/eval_sam3 under here
    rc = evaluate_cli.main(
        ["sam3", "--model", str(run / "final"), "--data", str(data), "--split", "validation",
         "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    out = tmp_path / "outputs" / "eval_sam3"
    report = json.loads((out / "report.json").read_text())
    evaluated = report["models"]["sam3"]["metrics"]["text"]
    settings = report["settings"]
    assert (settings["seed"], settings["negative_ratio"], settings["hard_negatives"]) == (
        0,
        0.5,
        False,
    )
    assert settings["score_threshold"] == 0.3  # read from the run's training config

    # the same (image, phrase) pairs, in the same order
    def pairs(records):
        return [(r["image_id"], p["phrase"], len(p["gt"])) for r in records for p in r["pairs"]]

    saved = json.loads((out / "records" / "sam3.json").read_text())["records"]["text"]
    assert pairs(saved) == pairs(trainer_records)
    assert any(not p["gt"] for r in saved for p in r["pairs"]), "no negative phrase was scored"
    assert evaluated["num_pairs"] == trainer["num_pairs"] == len(pairs(trainer_records))
    assert any(v for k, v in trainer.items() if not k.startswith("num_")), "nothing measured"
    # every metric, exactly
    assert set(evaluated) == set(trainer)
    for k, v in trainer.items():
        assert evaluated[k] == v, k


@pytest.mark.parametrize(
    ("flags", "want"),
    [([], (0, 0.5, False)), (["--seed", "3", "--negative-ratio", "1"], (3, 1.0, False))],
)
def test_pair_settings_come_from_the_training_config_unless_given(tmp_path, flags, want):
    scripts = evaluate_cli.build_parser().parse_args(
        ["sam3", "--model", "m", "--data", "d", *flags]
    )
    run_cfg = {"seed": 0, "negative_ratio": 0.5, "hard_negatives": False, "max_eval_samples": 0}
    got, notes = resolve_settings(evaluate_cli.settings_from(scripts), [("sam3", "sam3", run_cfg)])
    assert (got.seed, got.negative_ratio, got.hard_negatives) == want
    assert notes and "training config" in notes[0]
    # without a training config: the recipes' defaults
    plain, _ = resolve_settings(EvalSettings())
    assert (plain.seed, plain.negative_ratio, plain.hard_negatives, plain.max_images) == (
        42,
        0.2,
        True,
        0,
    )
    assert plain.score_threshold == 0.5
