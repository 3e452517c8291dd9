"""scripts/demo_forgetting.py: the held-out shapes table that ``make demo`` prints after the
orchard's before/after table.

A researcher reads it as "the fine-tune cost this much on what the checkpoint was pretrained
for", so the tests check that the numbers are the run's start checkpoint and its ``final/``
scored by the existing evaluation on images the pretraining never drew, and that the printed
change is after minus before. Tiny random models stand in for the demo's (a "run" folder is a
saved model with the ``training_config.yaml`` a real run writes beside it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
from scripts_loader import load_script

from sam_hf.config import Sam2Config, Sam3Config, load_config, save_config
from sam_hf.data.synthetic.shape_rows import make_shapes_dataset
from sam_hf.eval.settings import EvalSettings
from sam_hf.eval.sources import load_model

forgetting_cli = load_script("demo_forgetting")
evaluate_cli = load_script("evaluate")

SAM2_RES, SAM3_RES, NUM_IMAGES, RUN_SEED = 64, 112, 4, 3


def _fake_run(root: Path, final: Path, cfg: Sam2Config | Sam3Config) -> Path:
    """A run directory as the trainer leaves it: ``final/`` with its training config."""
    run = root / "run"
    shutil.copytree(final, run / "final")
    save_config(cfg, run / "final" / "training_config.yaml")
    return run


@pytest.fixture(scope="module")
def sam2_run(tmp_path_factory) -> dict:
    """A tiny SAM2 "pretrained" checkpoint and a "fine-tuned" run that started from it."""
    from sam_hf.models.sam2 import build_sam2

    root = tmp_path_factory.mktemp("forgetting2")
    for name, seed in (("pretrained", 0), ("tuned", 7)):
        cfg = load_config(
            Sam2Config,
            None,
            {"model_name_or_path": "sam2-tiny", "resolution": SAM2_RES, "seed": seed},
        )
        model, processor = build_sam2(cfg)
        model.save_pretrained(str(root / name))
        processor.save_pretrained(str(root / name))
    run_cfg = load_config(
        Sam2Config,
        None,
        {"model_name_or_path": str(root / "pretrained"), "resolution": SAM2_RES, "seed": RUN_SEED},
    )
    run = _fake_run(root, root / "tuned", run_cfg)
    return {"root": root, "run": run, "pretrained": root / "pretrained", "data": root / "data"}


def _table(text: str) -> tuple[str, dict[str, list[str]]]:
    """The printed title and ``{metric: [before, after, change]}`` (header row included)."""
    lines = text.strip().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("held-out shapes (forgetting)"))
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[start + 1 :] if ln.strip()}
    return lines[start], rows


def _check_rows(rows: dict[str, list[str]], before: dict, after: dict, keys: tuple) -> None:
    """Every metric row shows before, after and after - before at 4 decimals."""
    assert rows["metric"] == ["before", "after", "change"]
    for k in keys:
        assert rows[k] == [f"{before[k]:.4f}", f"{after[k]:.4f}", f"{after[k] - before[k]:+.4f}"], k


def test_sam2_table_is_the_evaluation_of_start_and_final(sam2_run, capsys):
    run, data_dir = sam2_run["run"], sam2_run["data"]
    rc = forgetting_cli.main(
        [str(run), "--data-dir", str(data_dir), "--num-images", str(NUM_IMAGES)]
    )
    assert rc == 0
    title, rows = _table(capsys.readouterr().out)
    saved = json.loads((run / "forgetting_results.json").read_text())
    # the run's start (from its training config) and its final/, at its resolution
    assert saved["before_model"] == str(sam2_run["pretrained"])
    assert Path(saved["after_model"]) == run / "final"
    assert saved["resolution"] == SAM2_RES and saved["num_images"] == NUM_IMAGES
    assert saved["heldout_seed"] == 1 and saved["prompt_seed"] == RUN_SEED
    assert f"{NUM_IMAGES} images" in title and f"{SAM2_RES} px" in title
    keys = ("mean_iou", "mean_dice", "mean_boundary_f1", "iou_at_50")
    _check_rows(rows, saved["before"], saved["after"], keys)

    # recomputed by scripts/evaluate.py on the same images: one centre click, the run's seed
    out = sam2_run["root"] / "report"
    rc = evaluate_cli.main(
        [
            "sam2", "--model", str(run / "final"), "--baseline", str(sam2_run["pretrained"]),
            "--data", saved["data"], "--split", "validation", "--out", str(out),
            "--prompts", "point", "--max-clicks", "0", "--max-images", "0",
            "--resolution", str(SAM2_RES), "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["seed"] == RUN_SEED
    assert saved["after"] == report["models"]["sam2"]["metrics"]["point"]
    assert saved["before"] == report["models"]["sam2-baseline"]["metrics"]["point"]
    assert saved["after"]["num_objects"] == saved["num_objects"] > 0
    assert saved["before"] != saved["after"]  # so the comparisons above tell the two apart


def test_heldout_shapes_are_not_the_pretraining_images_and_are_reused(tmp_path):
    path = forgetting_cli.heldout_shapes(
        tmp_path, SAM2_RES, NUM_IMAGES, forgetting_cli.HELDOUT_SEED
    )
    ds = datasets.load_from_disk(str(path))["validation"]
    assert len(ds) == NUM_IMAGES
    assert ds[0]["width"] == ds[0]["height"] == SAM2_RES
    # the pretraining recipes draw seed 0: none of its first images is among the held-out ones
    pretraining = make_shapes_dataset(
        4 * NUM_IMAGES, 0, (SAM2_RES, SAM2_RES), cache_dir=str(tmp_path / "c")
    )
    raw = datasets.Image(decode=False)
    seen = {r["image"]["bytes"] for r in pretraining.cast_column("image", raw)}
    assert not seen & {r["image"]["bytes"] for r in ds.cast_column("image", raw)}
    # generated once: a second call finds the folder and does not draw again
    stamp = (path / "dataset_dict.json").stat().st_mtime_ns
    again = forgetting_cli.heldout_shapes(
        tmp_path, SAM2_RES, NUM_IMAGES, forgetting_cli.HELDOUT_SEED
    )
    assert again == path and (path / "dataset_dict.json").stat().st_mtime_ns == stamp


def test_a_folder_without_training_config_needs_baseline(sam2_run, tmp_path, capsys):
    rc = forgetting_cli.main([str(sam2_run["pretrained"]), "--data-dir", str(tmp_path)])
    assert rc == 2
    assert "--baseline" in capsys.readouterr().err


@pytest.mark.slow
def test_sam3_table_is_the_evaluation_of_start_and_final(tmp_path, confident_sam3, capsys):
    from sam_hf.eval.sam3 import evaluate_sam3

    pretrained = confident_sam3(seed=0, resolution=SAM3_RES)
    run_cfg = load_config(
        Sam3Config,
        None,
        {"model_name_or_path": str(pretrained), "resolution": SAM3_RES, "seed": RUN_SEED,
         "negative_ratio": 0.5, "hard_negatives": False},
    )  # fmt: skip
    run = _fake_run(tmp_path, confident_sam3(seed=7, resolution=SAM3_RES), run_cfg)
    rc = forgetting_cli.main([str(run), "--data-dir", str(tmp_path / "data"), "--num-images", "3"])
    assert rc == 0
    _, rows = _table(capsys.readouterr().out)
    saved = json.loads((run / "forgetting_results.json").read_text())
    assert saved["before_model"] == str(pretrained) and saved["resolution"] == SAM3_RES
    _check_rows(rows, saved["before"], saved["after"], ("cgF1", "concept_recall", "mask_AP"))

    # recomputed with the SAM3 protocol directly: the run's seed and negatives, the held-out
    # images' own phrases as the negative vocabulary
    ds = datasets.load_from_disk(saved["data"])["validation"]
    settings = EvalSettings(
        seed=RUN_SEED, negative_ratio=0.5, hard_negatives=False, score_threshold=0.5
    )
    for key, model in (("before", pretrained), ("after", run / "final")):
        want = evaluate_sam3(load_model(str(model), "sam3", resolution=SAM3_RES), ds, ds, settings)
        assert saved[key] == pytest.approx(want.metrics["text"], nan_ok=True), key
    assert saved["after"]["num_pairs"] > 0
    assert saved["before"] != saved["after"]  # so the comparisons above tell the two apart
