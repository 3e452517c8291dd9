"""scripts/evaluate.py for the SAM3 tracker, and the three-way compare with its equal-prompt gap.

What a user relies on: ``evaluate.py sam3_tracker`` scores a tracker exactly as SAM2 is scored
(same protocols, numbers equal to the metric functions); ``compare`` with all three families
gives SAM2 and the tracker the very same prompts -- even at different input sizes -- and
reports the tracker-minus-SAM2 gap with a paired bootstrap interval that is reproducible,
exactly zero for identical models, and equal to the difference of the reported numbers.
Tiny random models at 128 px (SAM2) and 112 px (tracker, SAM3), synthetic orchard images.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from scripts_loader import load_script

from sam_hf.data.sources.coco import convert_coco_text
from sam_hf.eval.bootstrap import PromptMismatch, equal_prompt_gap, paired_bootstrap
from sam_hf.eval.compare import ModelEvaluation
from sam_hf.eval.sam2 import from_model_coords
from sam_hf.eval.sources import resolve_source
from sam_hf.models.sam2_training import Sam2ForTraining

evaluate_cli = load_script("evaluate")

SAM2_RES, TRACKER_RES, SAM3_RES, SEED = 128, 112, 112, 42
PROTOCOLS = ("point", "points3", "box")
GAP_KEYS = ("mean_iou", "mean_dice", "mean_boundary_f1", "iou_at_50")


@pytest.fixture(scope="module")
def tracker_data(tmp_path_factory, orchard, confident_sam3) -> dict:
    """Synthetic orchard (coco-text view), a saved tiny tracker, a confident tiny SAM3."""
    from sam_hf.eval.sources import load_model

    root = tmp_path_factory.mktemp("eval_tracker")
    coco = orchard(num_images=8, seed=3, image_size=(96, 128)) / "coco_text"
    ann = coco / "annotations"
    dd = datasets.DatasetDict(
        {
            "train": convert_coco_text(coco / "images", ann / "train.json", cache_dir=root / "c")[
                "train"
            ],
            "validation": convert_coco_text(
                coco / "images", ann / "val.json", split="validation", cache_dir=root / "c"
            )["validation"],
        }
    )
    dd.save_to_disk(str(root / "data"))
    # a "fine-tuned" tracker: a tiny one of another seed, saved like a run's final/
    tracker = load_model("sam3-tracker-tiny", seed=7, resolution=TRACKER_RES)
    tracker.module.model.save_pretrained(str(root / "tracker_ft"))
    tracker.processor.save_pretrained(str(root / "tracker_ft"))
    sam3 = confident_sam3(seed=7, resolution=SAM3_RES)
    return {"root": root, "data": root / "data", "dd": dd, "sam3": sam3}


@pytest.fixture(scope="module")
def three_way(tracker_data) -> dict:
    """``compare`` with all three families; every batch SAM2 and the tracker were given is
    captured (by their input size) to check the prompts that really reached each model."""
    seen: dict[int, list[dict]] = {SAM2_RES: [], TRACKER_RES: []}
    predict = Sam2ForTraining.predict

    def capture(self, batch):
        seen[int(batch["pixel_values"].shape[-1])].append(
            {k: batch[k] for k in ("image_ids", "orig_sizes", "num_prompt_points")}
            | {"points": batch["input_points"].cpu().clone()}
        )
        return predict(self, batch)

    out = tracker_data["root"] / "compare"
    argv = [
        "compare",
        "--sam2", "sam2-tiny", "--sam2-resolution", str(SAM2_RES),
        "--sam3-tracker", str(tracker_data["root"] / "tracker_ft"),
        "--sam3-tracker-resolution", str(TRACKER_RES),
        "--sam3", str(tracker_data["sam3"]), "--sam3-resolution", str(SAM3_RES),
        "--data", str(tracker_data["data"]), "--out", str(out),
        "--max-clicks", "2", "--bootstrap", "300", "--seed", str(SEED), "--no-progress",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Sam2ForTraining, "predict", capture)
        assert evaluate_cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    records = {
        label: json.loads((out / "records" / f"{label}.json").read_text())["records"]
        for label in ("sam2", "sam3-tracker")
    }
    return {"out": out, "report": report, "records": records, "seen": seen}


# ----------------------------------------------------------------- evaluate.py sam3_tracker


def _tracker_metrics(module, batch: dict) -> dict:
    """Sam2ForTraining.predict on one batch, scored with the metric functions."""
    from sam_hf.metrics.masks import boundary_f1, dice, mask_iou

    preds = module.predict(batch)
    pred, gt = [p["pred_masks"] for p in preds], [p["gt_masks"] for p in preds]
    ious = torch.cat([mask_iou(p, g) for p, g in zip(pred, gt)]).double()
    return {
        "mean_iou": float(ious.mean()),
        "mean_dice": float(torch.cat([dice(p, g) for p, g in zip(pred, gt)]).double().mean()),
        "mean_boundary_f1": float(
            torch.cat([boundary_f1(p, g) for p, g in zip(pred, gt)]).double().mean()
        ),
        "iou_at_50": float((ious >= 0.5).double().mean()),
        "num_objects": int(ious.numel()),
    }


def _independent_tracker(folder: Path, dd: datasets.DatasetDict) -> dict[str, dict]:
    """Per protocol: the saved tracker through from_pretrained + Sam2ForTraining.predict +
    metric functions, its prompts drawn on each object's original-resolution mask (the
    protocol's rule) and mapped into the 112 px input; the image encoder runs once."""
    from transformers import Sam3TrackerModel, Sam3TrackerProcessor

    from sam_hf.config import Sam3TrackerConfig, load_config
    from sam_hf.data.collate import Sam2Collator
    from sam_hf.data.prompts import make_generator, sample_object_prompt
    from sam_hf.data.transforms import SegmentationDataset
    from sam_hf.eval.sam2 import to_model_coords

    cfg = load_config(Sam3TrackerConfig, None, {"resolution": TRACKER_RES})
    module = Sam2ForTraining(Sam3TrackerModel.from_pretrained(folder), cfg).eval()
    ip = Sam3TrackerProcessor.from_pretrained(folder).image_processor
    ds = SegmentationDataset(
        dd["validation"], TRACKER_RES, ip.image_mean, ip.image_std, SEED, train=False,
        keep_orig_masks=True,
    )  # fmt: skip
    samples = [s for s in (ds[i] for i in range(len(ds))) if s["masks"].shape[0]]
    out, features = {}, None
    for prompt in PROTOCOLS:
        kind, n_points = ("box" if prompt == "box" else "point"), (3 if prompt == "points3" else 1)
        batch = Sam2Collator(
            SimpleNamespace(
                prompt_type=kind, num_points=n_points, box_noise=0.0, box_noise_max_px=0.0,
                mask_prompt_prob=0.0, max_objects_per_image=10_000,
            ),
            train=False,
        )(samples)  # fmt: skip
        for bi, s in enumerate(samples):
            for j, mask in enumerate(s["orig_masks"]):
                g = make_generator(s["seed"], "sam2-prompt", j)
                pts, _ = sample_object_prompt(
                    mask, g, prompt_type=kind, num_points=n_points, train=False
                )
                xy = to_model_coords(pts, s["orig_size"], TRACKER_RES)
                batch["input_points"][bi, j, : len(pts)] = xy
        with torch.no_grad():
            features = features or module.encoder_features(batch["pixel_values"])
        batch["image_embeddings"] = features
        out[prompt] = _tracker_metrics(module, batch)
    return out


def test_sam3_tracker_mode_numbers_equal_the_metric_functions(tracker_data):
    out = tracker_data["root"] / "tracker_only"
    folder = tracker_data["root"] / "tracker_ft"
    rc = evaluate_cli.main(
        ["sam3_tracker", "--model", str(folder), "--resolution", str(TRACKER_RES),
         "--data", str(tracker_data["data"]), "--out", str(out), "--max-clicks", "1",
         "--seed", str(SEED), "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    assert evaluate_cli.DEFAULT_OUT["sam3_tracker"] == "outputs/eval_sam3_tracker"
    report = json.loads((out / "report.json").read_text())
    model = report["models"]["sam3-tracker"]
    assert model["family"] == "sam3_tracker" and set(model["metrics"]) == set(PROTOCOLS)
    assert model["clicks"]["max_clicks"] == 1 and "NoC@85" in model["clicks"]
    independent = _independent_tracker(folder, tracker_data["dd"])
    for prompt in PROTOCOLS:
        want, got = independent[prompt], model["metrics"][prompt]
        for k in GAP_KEYS:
            assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), (prompt, k)
        assert got["num_objects"] == want["num_objects"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "clicks_to_iou.png",
        "iou_histograms.png",
        "metric_bars.png",
        "overlays_best_worst.png",
    ]
    md = (out / "report.md").read_text()
    assert "## SAM3 tracker: prompted segmentation" in md and "| SAM3 tracker |" in md
    assert "Equal-prompt gap" not in md  # nothing to subtract with one family


# ---------------------------------------------------------------------- the three-way compare


def test_compare_three_families_states_each_prompt_and_the_gap(three_way):
    out, report = three_way["out"], three_way["report"]
    assert list(report["models"]) == ["sam2", "sam3-tracker", "sam3"]
    assert {m["family"] for m in report["models"].values()} == {"sam2", "sam3_tracker", "sam3"}
    assert (
        "equal_prompt_gap.png" in report["artefacts"] and (out / "equal_prompt_gap.png").is_file()
    )
    md = (out / "report.md").read_text()
    table = md.split("## SAM2 vs SAM3 tracker vs SAM3")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| sam")]
    by_family = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        by_family.setdefault(cells[1], set()).add(cells[2])
    geometric = {
        "1 centre point per instance (from GT)",
        "3 points per instance (from GT)",
        "exact GT box per instance",
    }
    assert by_family == {
        "SAM2": geometric,
        "SAM3 tracker": geometric,
        "SAM3": {"text only (noun phrases + negatives)"},
    }
    gap = md.split("## Equal-prompt gap: SAM3 tracker minus SAM2")[1].split("\n## ")[0]
    assert "300 resamples (numpy seed 42)" in gap and "95% CI" in gap
    assert "| exact GT box per instance | mean IoU |" in gap
    with open(out / "report.csv") as f:
        csv_rows = list(csv.DictReader(f))
    prompts = {(r["model"], r["protocol"]): r["prompt"] for r in csv_rows}
    assert prompts[("sam3-tracker", "box")] == prompts[("sam2", "box")]
    assert prompts[("sam3", "text")] == "text only (noun phrases + negatives)"
    assert ("sam3-tracker - sam2", "point") in prompts


def test_sam2_and_the_tracker_are_given_identical_prompts(three_way):
    """Recorded prompts (original pixels) are equal object by object; and what reached each
    model (its own input frame, 128 vs 112 px) maps back to exactly those prompts."""
    sam2, tracker = three_way["records"]["sam2"], three_way["records"]["sam3-tracker"]
    n_objects = 0
    for proto in PROTOCOLS:
        assert [r["image_id"] for r in sam2[proto]] == [r["image_id"] for r in tracker[proto]]
        for a, b in zip(sam2[proto], tracker[proto]):
            assert a["prompt_points"] == b["prompt_points"]
            assert a["prompt_labels"] == b["prompt_labels"]
            n_objects += len(a["prompt_points"])
    assert n_objects == sum(
        three_way["report"]["models"]["sam2"]["metrics"][p]["num_objects"] for p in PROTOCOLS
    )
    recorded = {
        (proto, r["image_id"]): r["prompt_points"] for proto in PROTOCOLS for r in sam2[proto]
    }
    for res, batches in three_way["seen"].items():
        assert len(batches) % len(PROTOCOLS) == 0 and batches  # each image batch, each protocol
        for i, batch in enumerate(batches):
            proto = PROTOCOLS[i % len(PROTOCOLS)]
            for bi, iid in enumerate(batch["image_ids"]):
                want = torch.tensor(recorded[(proto, iid)])
                n_obj, n_pts = want.shape[:2]
                got = from_model_coords(
                    batch["points"][bi, :n_obj, :n_pts], batch["orig_sizes"][bi], res
                )
                assert torch.allclose(got, want, atol=1e-4), (res, proto, iid)
    # the two frames differ: drawing on each model's resized mask would not give equal prompts
    a, b = three_way["seen"][SAM2_RES][0]["points"], three_way["seen"][TRACKER_RES][0]["points"]
    assert not torch.allclose(a, b)


def test_gap_is_tracker_minus_sam2_of_the_reported_numbers(three_way):
    report = three_way["report"]
    (gap,) = report["equal_prompt_gap"]
    assert (gap["sam2"], gap["sam3_tracker"], gap["resamples"], gap["seed"]) == (
        "sam2", "sam3-tracker", 300, SEED,
    )  # fmt: skip
    m = report["models"]
    with open(three_way["out"] / "report.csv") as f:
        csv_value = {
            (r["model"], r["protocol"], r["metric"]): r["value"] for r in csv.DictReader(f)
        }
    for proto in PROTOCOLS:
        for k in GAP_KEYS:
            row = gap["protocols"][proto][k]
            want = m["sam3-tracker"]["metrics"][proto][k] - m["sam2"]["metrics"][proto][k]
            assert row["gap"] == pytest.approx(want, abs=1e-12), (proto, k)
            assert row["ci_low"] <= row["gap"] <= row["ci_high"], (proto, k)
            assert float(csv_value[("sam3-tracker - sam2", proto, k)]) == pytest.approx(want)
            assert float(csv_value[("sam3-tracker - sam2", proto, f"{k}/ci_low")]) == (
                pytest.approx(row["ci_low"])
            )


def _model(label: str, records: dict, metrics: dict) -> ModelEvaluation:
    src = resolve_source("sam2-tiny")
    return ModelEvaluation(label, "model", src, SAM2_RES, 0, metrics=metrics, records=records)


def test_identical_models_have_gap_zero_and_a_mismatch_is_refused(three_way):
    records = three_way["records"]["sam2"]
    metrics = three_way["report"]["models"]["sam2"]["metrics"]
    a, b = _model("a", records, metrics), _model("b", json.loads(json.dumps(records)), metrics)
    b = dataclasses.replace(b, source=dataclasses.replace(b.source, family="sam3_tracker"))
    gap = equal_prompt_gap(a, b, resamples=200, seed=1)
    for proto in PROTOCOLS:
        for row in gap["protocols"][proto].values():
            assert (row["gap"], row["ci_low"], row["ci_high"]) == (0.0, 0.0, 0.0)
    tampered = json.loads(json.dumps(records))
    tampered["box"][0]["prompt_points"][0][0][0] += 1.0
    with pytest.raises(PromptMismatch, match="prompted differently"):
        equal_prompt_gap(a, _model("c", tampered, metrics), resamples=10, seed=1)


def test_paired_bootstrap_interval_is_seeded_and_holds_the_estimate():
    rng = np.random.default_rng(0)
    a = [rng.uniform(0, 1, size=int(rng.integers(1, 6))) for _ in range(30)]
    b = [np.clip(x + rng.normal(0.05, 0.1, size=x.size), 0, 1) for x in a]
    first = paired_bootstrap(a, b, resamples=500, seed=3)
    assert first == paired_bootstrap(a, b, resamples=500, seed=3)
    assert first != paired_bootstrap(a, b, resamples=500, seed=4)
    assert first["ci_low"] < first["gap"] < first["ci_high"]
    assert first["gap"] == pytest.approx(np.concatenate(b).mean() - np.concatenate(a).mean())
    same = paired_bootstrap(a, [x.copy() for x in a], resamples=500, seed=3)
    assert (same["gap"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, b[:-1], resamples=10, seed=0)


def test_compare_tracker_baseline_needs_the_tracker(tracker_data, capsys):
    rc = evaluate_cli.main(
        ["compare", "--sam3-tracker-baseline", "sam3-tracker-tiny",
         "--data", str(tracker_data["data"]), "--out", str(tracker_data["root"] / "x")]
    )  # fmt: skip
    assert rc == 2
    assert "--sam3-tracker-baseline needs --sam3-tracker" in capsys.readouterr().err
