"""scripts/evaluate.py and sam_hf.eval (protocols, report, run curves) on tiny random models.

The central check recomputes the report's numbers independently: the saved models are loaded
with plain ``from_pretrained``, run through the training wrappers' own ``predict`` on collator
batches, and scored with the metric functions of ``sam_hf.metrics``; the report must hold the
same values. Data: a few synthetic orchard images (COCO-text view: instance masks + phrases).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
import yaml
from scripts_loader import load_script

from sam_hf.data import rle
from sam_hf.data.prompts import make_generator, sample_correction_clicks, sample_object_prompt
from sam_hf.data.sources.coco import convert_coco_text
from sam_hf.eval.run_curves import log_history, plot_run, read_trainer_state
from sam_hf.eval.sam2 import (
    click_summary,
    correction_click,
    from_model_coords,
    number_of_clicks,
    to_model_coords,
)
from sam_hf.eval.sources import EvaluationError, load_model, resolve_source
from sam_hf.metrics.matching import remap_scores

ROOT = Path(__file__).resolve().parents[1]


evaluate_cli = load_script("evaluate")
plot_run_cli = load_script("plot_run")

SAM2_RES, SAM3_RES, SEED = 128, 112, 42


def _sam2_cfg(**kw):
    from sam_hf.config import Sam2Config, load_config

    return load_config(Sam2Config, None, {"resolution": SAM2_RES, **kw})


def _sam3_cfg(**kw):
    from sam_hf.config import Sam3Config, load_config

    return load_config(Sam3Config, None, {"resolution": SAM3_RES, **kw})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, orchard, confident_sam3) -> dict:
    """Synthetic orchard (coco-text view) + a fine-tuned folder per family + an adapter."""
    from sam_hf.models.sam2 import build_sam2

    root = tmp_path_factory.mktemp("eval")
    coco = orchard(num_images=8, seed=3, image_size=(96, 128)) / "coco_text"
    dd = datasets.DatasetDict(
        {
            "train": convert_coco_text(
                coco / "images", coco / "annotations" / "train.json", cache_dir=root / "cache"
            )["train"],
            "validation": convert_coco_text(
                coco / "images",
                coco / "annotations" / "val.json",
                split="validation",
                cache_dir=root / "cache",
            )["validation"],
        }
    )
    dd.save_to_disk(str(root / "data"))

    # "fine-tuned" SAM2: another seed than the baseline, saved like a run's final/
    m2, p2 = build_sam2(_sam2_cfg(model_name_or_path="sam2-tiny", seed=7))
    m2.save_pretrained(str(root / "sam2_ft"))
    p2.save_pretrained(str(root / "sam2_ft"))
    # "fine-tuned" SAM3: presence head pushed up so that predictions pass the 0.5 score cut
    shutil.copytree(confident_sam3(seed=7, resolution=SAM3_RES), root / "sam3_ft")
    return {"root": root, "data": root / "data", "dd": dd}


@pytest.fixture(scope="module")
def compare_out(workdir) -> Path:
    out = workdir["root"] / "report"
    rc = evaluate_cli.main(
        [
            "compare",
            "--sam2", str(workdir["root"] / "sam2_ft"),
            "--sam2-baseline", "sam2-tiny",
            "--sam3", str(workdir["root"] / "sam3_ft"),
            "--sam3-baseline", "sam3-tiny",
            "--sam2-resolution", str(SAM2_RES),
            "--sam3-resolution", str(SAM3_RES),
            "--data", str(workdir["data"]),
            "--split", "validation",
            "--out", str(out),
            "--max-clicks", "3",
            "--seed", str(SEED),
            "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    return out


# ------------------------------------------------------------------------ the compare report


def test_compare_writes_every_artefact(compare_out):
    for name in ("report.md", "report.json", "report.csv", "records/sam2.json"):
        assert (compare_out / name).is_file(), name
    pngs = sorted(p.name for p in compare_out.glob("*.png"))
    assert pngs == [
        "clicks_to_iou.png",
        "iou_histograms.png",
        "metric_bars.png",
        "overlays_best_worst.png",
        "sam2_vs_sam3.png",
    ]
    report = json.loads((compare_out / "report.json").read_text())
    assert set(report["models"]) == {"sam2", "sam2-baseline", "sam3", "sam3-baseline"}
    assert report["models"]["sam2"]["role"] == "fine-tuned"
    assert report["models"]["sam2-baseline"]["kind"] == "tiny"
    assert set(report["models"]["sam2"]["metrics"]) == {"point", "points3", "box"}
    assert all(a in report["artefacts"] for a in ("report.md", "metric_bars.png"))
    md = (compare_out / "report.md").read_text()
    # the SAM2-vs-SAM3 table says which prompt each model got
    gap = md.split("## SAM2 vs SAM3")[1].split("\n## ")[0]
    assert "1 centre point per instance (from GT)" in gap
    assert "exact GT box per instance" in gap
    assert "text only (noun phrases + negatives)" in gap
    assert "## Baseline vs fine-tuned" in md


def _independent_sam2(workdir, prompt: str) -> dict:
    """Fine-tuned SAM2 through from_pretrained + Sam2ForTraining.predict + metric functions."""
    from transformers import Sam2Model, Sam2Processor

    from sam_hf.data.collate import Sam2Collator
    from sam_hf.data.transforms import SegmentationDataset
    from sam_hf.metrics.masks import boundary_f1, dice, mask_iou
    from sam_hf.models.sam2_training import Sam2ForTraining

    folder = workdir["root"] / "sam2_ft"
    module = Sam2ForTraining(Sam2Model.from_pretrained(folder), _sam2_cfg()).eval()
    ip = Sam2Processor.from_pretrained(folder).image_processor
    ds = SegmentationDataset(
        workdir["dd"]["validation"], SAM2_RES, ip.image_mean, ip.image_std, SEED, train=False,
        keep_orig_masks=True,
    )  # fmt: skip
    collator = Sam2Collator(
        SimpleNamespace(
            prompt_type="box" if prompt == "box" else "point",
            num_points=3 if prompt == "points3" else 1,
            box_noise=0.0, box_noise_max_px=0.0, mask_prompt_prob=0.0,
            max_objects_per_image=10_000,
        ),
        train=False,
    )  # fmt: skip
    samples = [s for s in (ds[i] for i in range(len(ds))) if s["masks"].shape[0]]
    batch = collator(samples)
    # the protocol's prompts: drawn on each object's original-resolution mask (the collator's
    # seeded streams), mapped into the model input -- the same for every input size
    for bi, s in enumerate(samples):
        for j, mask in enumerate(s["orig_masks"]):
            pts, _ = sample_object_prompt(
                mask, make_generator(s["seed"], "sam2-prompt", j), train=False,
                prompt_type="box" if prompt == "box" else "point",
                num_points=3 if prompt == "points3" else 1,
            )  # fmt: skip
            batch["input_points"][bi, j, : len(pts)] = to_model_coords(
                pts, s["orig_size"], SAM2_RES
            )
    preds = module.predict(batch)
    pred = [p["pred_masks"] for p in preds]
    gt = [p["gt_masks"] for p in preds]
    ious = torch.cat([mask_iou(p, g) for p, g in zip(pred, gt)]).double()
    return {
        "preds": preds,
        "mean_iou": float(ious.mean()),
        "mean_dice": float(torch.cat([dice(p, g) for p, g in zip(pred, gt)]).double().mean()),
        "mean_boundary_f1": float(
            torch.cat([boundary_f1(p, g) for p, g in zip(pred, gt)]).double().mean()
        ),
        "iou_at_50": float((ious >= 0.5).double().mean()),
        "num_objects": int(ious.numel()),
    }


@pytest.mark.parametrize("prompt", ["point", "points3", "box"])
def test_sam2_numbers_equal_the_metric_functions(workdir, compare_out, prompt):
    report = json.loads((compare_out / "report.json").read_text())
    got = report["models"]["sam2"]["metrics"][prompt]
    want = _independent_sam2(workdir, prompt)
    for k in ("mean_iou", "mean_dice", "mean_boundary_f1", "iou_at_50"):
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
    assert got["num_objects"] == want["num_objects"]
    # the saved records hold exactly these predictions
    records = json.loads((compare_out / "records" / "sam2.json").read_text())["records"][prompt]
    assert [r["image_id"] for r in records] == [p["image_id"] for p in want["preds"]]
    for r, p in zip(records, want["preds"]):
        h, w = p["pred_masks"].shape[1:]
        assert np.array_equal(rle.decode_many(r["pred"], h, w), p["pred_masks"].numpy())
    # the common column: concept recall per phrase, from the same per-instance IoUs
    per_phrase: dict[str, list[bool]] = {}
    for r in records:
        for phrase, v in zip(r["phrases"], r["iou"]):
            per_phrase.setdefault(phrase.lower(), []).append(v >= 0.5)
    common = report["models"]["sam2"]["common"][prompt]
    assert common["concept_recall"] == pytest.approx(
        np.mean([np.mean(v) for v in per_phrase.values()])
    )
    assert common["mean_instance_iou"] == pytest.approx(want["mean_iou"])


def test_sam3_numbers_equal_the_metric_functions(workdir, compare_out):
    from transformers import Sam3Model, Sam3Processor

    from sam_hf.data.queries import PhraseVocab, Sam3Collator
    from sam_hf.data.transforms import SegmentationDataset
    from sam_hf.metrics.coco import coco_mask_ap
    from sam_hf.metrics.concepts import (
        attribute_accuracy,
        concept_recall,
        grounding_accuracy,
        saco_metrics,
    )
    from sam_hf.metrics.matching import mean_matched_iou
    from sam_hf.models.sam3 import Sam3ForTraining

    folder = workdir["root"] / "sam3_ft"
    module = Sam3ForTraining(Sam3Model.from_pretrained(folder), _sam3_cfg()).eval()
    proc = Sam3Processor.from_pretrained(folder)
    ip = proc.image_processor
    ds = SegmentationDataset(
        workdir["dd"]["validation"], SAM3_RES, ip.image_mean, ip.image_std, SEED, train=False,
        keep_orig_masks=True,
    )  # fmt: skip
    collator = Sam3Collator(
        SimpleNamespace(negative_ratio=0.2, max_phrases_per_image=0, hard_negatives=True),
        PhraseVocab.from_dataset(workdir["dd"]["train"]),
        proc.tokenizer,
        train=False,
    )
    preds = module.predict(collator([ds[i] for i in range(len(ds))]))
    pairs = [pair for p in preds for pair in p["pairs"]]
    assert any(bool((p["scores"] >= 0.5).any()) for p in pairs), "test model keeps nothing"
    want = dict(saco_metrics(pairs))
    want["concept_recall"] = concept_recall(pairs)
    want["grounding_accuracy"] = grounding_accuracy(pairs)
    want["attribute_accuracy"] = attribute_accuracy(pairs)
    want.update(coco_mask_ap([{**p, "category": p["phrase"]} for p in pairs]))
    want["mean_iou"] = mean_matched_iou(pairs)

    report = json.loads((compare_out / "report.json").read_text())
    got = report["models"]["sam3"]["metrics"]["text"]
    assert got["num_pairs"] == len(pairs)
    for k in ("cgF1", "pmF1", "IL_MCC", "cgF1_50", "concept_recall", "grounding_accuracy",
              "attribute_accuracy", "mask_AP", "mask_AP50", "mask_AR", "mean_iou"):  # fmt: skip
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9), k
    common = report["models"]["sam3"]["common"]["text"]
    assert common["mean_instance_iou"] == pytest.approx(want["mean_iou"])
    assert common["concept_recall"] == pytest.approx(want["concept_recall"])
    assert common["num_instances"] == sum(int(p["gt"].shape[0]) for p in pairs)
    pooled = concept_recall([{**p, "phrase": "x"} for p in pairs])
    assert common["instance_recall"] == pytest.approx(pooled)


def test_report_csv_deltas_and_clicks_agree_with_json(compare_out):
    report = json.loads((compare_out / "report.json").read_text())
    with open(compare_out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    value = {(r["model"], r["protocol"], r["metric"]): r["value"] for r in rows}
    assert float(value[("sam3", "text", "cgF1")]) == pytest.approx(
        report["models"]["sam3"]["metrics"]["text"]["cgF1"]
    )
    assert float(value[("sam2-baseline", "box", "mean_dice")]) == pytest.approx(
        report["models"]["sam2-baseline"]["metrics"]["box"]["mean_dice"]
    )
    m = report["models"]
    d = report["comparisons"]["sam2"]["delta"]["point"]["mean_iou"]
    assert d == pytest.approx(
        m["sam2"]["metrics"]["point"]["mean_iou"]
        - m["sam2-baseline"]["metrics"]["point"]["mean_iou"]
    )
    # clicks: NoC in the report is the summary of the saved per-object curves
    curves = json.loads((compare_out / "records" / "sam2.json").read_text())["click_curves"]
    assert (
        len(curves)
        == m["sam2"]["clicks"]["num_objects"]
        == m["sam2"]["metrics"]["point"]["num_objects"]
    )
    assert all(len(c) == 3 for c in curves)
    summary = click_summary(curves, (0.85, 0.9), 3)
    assert m["sam2"]["clicks"]["NoC@85"] == pytest.approx(summary["NoC@85"])
    assert m["sam2"]["clicks"]["miou_per_click"] == pytest.approx(summary["miou_per_click"])
    assert value[("sam2", "clicks", "mIoU@3")] != ""


def _blank_phrases(row: dict) -> dict:
    for obj in row["objects"]:
        obj["noun_phrase"] = ""
    return row


def test_sam3_mode_without_phrases_queries_categories_and_says_so(workdir, tmp_path):
    dd = workdir["dd"].map(_blank_phrases)
    dd.save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "out"
    rc = evaluate_cli.main(
        ["sam3", "--model", str(workdir["root"] / "sam3_ft"), "--data", str(tmp_path / "data"),
         "--out", str(out), "--max-images", "1", "--score-threshold", "0.3", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["phrase_source"] == "category fallback"
    assert report["data"]["num_images"] == 1 and report["settings"]["score_threshold"] == 0.3
    records = json.loads((out / "records" / "sam3.json").read_text())["records"]["text"]
    positives = [p["phrase"] for r in records for p in r["pairs"] if p["gt"]]
    assert positives == ["apple"]  # the category stands in for the missing phrases
    notes = (out / "report.md").read_text().split("## Notes")[1]
    assert "have no noun phrase" in notes and "category name" in notes
    assert "score threshold 0.3" in notes
    assert sorted(p.name for p in out.glob("*.png")) == [
        "iou_histograms.png",
        "metric_bars.png",
        "overlays_best_worst.png",
    ]


# -------------------------------------------------------------------------- NoC and clicks


def test_number_of_clicks_on_a_hand_made_curve():
    curve = [0.40, 0.84, 0.86, 0.89, 0.93]
    assert number_of_clicks(curve, 0.85) == 3  # first click reaching 0.85 (0.86 at click 3)
    assert number_of_clicks(curve, 0.90) == 5
    assert number_of_clicks(curve, 0.40) == 1  # ">=": reaching exactly the target counts
    assert number_of_clicks(curve, 0.95) == 5  # never reached: the click budget, not infinity
    assert number_of_clicks(curve, 0.95, max_clicks=20) == 20
    assert number_of_clicks(curve[:2], 0.85, max_clicks=2) == 2
    s = click_summary([curve, [0.9, 0.95, 0.97, 0.98, 0.99]], (0.85, 0.90), 5)
    assert s["NoC@85"] == pytest.approx((3 + 1) / 2)
    assert s["NoC@90"] == pytest.approx((5 + 1) / 2)
    assert s["NoF@90"] == 0 and click_summary([curve], (0.95,), 5)["NoF@95"] == 1
    assert s["miou_per_click"][0] == pytest.approx(0.65)


@pytest.mark.parametrize("seed", range(6))
def test_cropped_correction_click_equals_the_full_image_rule(seed):
    g = torch.Generator().manual_seed(seed)
    h, w = 40, 56
    gt = torch.zeros(h, w, dtype=torch.bool)
    pred = torch.zeros(h, w, dtype=torch.bool)
    y, x = (int(v) for v in torch.randint(0, 30, (2,), generator=g))
    gt[y : y + 12, x : x + 20] = True
    dy, dx = (int(v) for v in torch.randint(-6, 7, (2,), generator=g))
    pred[max(y + dy, 0) : y + dy + 12, max(x + dx, 0) : x + dx + 20] = True
    pred |= torch.rand(h, w, generator=g) > 0.97  # scattered false positives
    if seed == 0:
        gt[:, :3] = True  # errors touching the image border
    if seed == 1:
        pred = gt.clone()  # no error left: background click
    pts, labels = sample_correction_clicks(pred[None], gt[None], [g], "center")
    x_c, y_c, lab = correction_click(pred, gt)
    assert (x_c, y_c, lab) == (float(pts[0, 0]), float(pts[0, 1]), int(labels[0]))


def test_model_coordinates_round_trip_and_pixel_centres():
    xy = torch.tensor([[0.0, 0.0], [127.0, 95.0], [63.0, 10.0]])
    size = (96, 128)  # (H, W)
    r = to_model_coords(xy, size, 256)
    assert torch.allclose(from_model_coords(r, size, 256), xy, atol=1e-5)
    # pixel 0 of a 128-wide image covers [0, 1) -> [0, 2) at 256 px: its centre is index 0.5
    assert r[0, 0].item() == pytest.approx(0.5)
    assert torch.equal(to_model_coords(xy, (128, 128), 128), xy)


def test_remap_scores_moves_the_threshold_to_one_half_and_keeps_order():
    s = torch.tensor([0.0, 0.1, 0.2999, 0.3, 0.31, 0.7, 1.0])
    r = remap_scores(s, 0.3)
    assert ((r >= 0.5) == (s >= 0.3)).all()
    assert torch.all(r[1:] > r[:-1])
    assert r[3].item() == 0.5 and r[-1].item() == pytest.approx(1.0)
    assert torch.equal(remap_scores(s, 0.5), s)
    with pytest.raises(ValueError, match="within"):
        remap_scores(s, 1.0)


# ------------------------------------------------------------------------------ model sources


def test_resolve_source_kinds_and_errors(workdir, tmp_path):
    root = workdir["root"]
    src = resolve_source(str(root / "sam2_ft"))
    assert (src.family, src.kind, src.resolution) == ("sam2", "folder", SAM2_RES)
    assert resolve_source("sam3-tiny").resolution == 224
    assert resolve_source("facebook/sam3").kind == "hub"
    # a run directory evaluates its final/
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    for f in (root / "sam3_ft").iterdir():
        (run / "final" / f.name).write_bytes(f.read_bytes())
    assert resolve_source(str(run), "sam3").base == str(run / "final")
    with pytest.raises(EvaluationError, match="holds a SAM2 model.*--sam2"):
        resolve_source(str(root / "sam2_ft"), "sam3")
    with pytest.raises(EvaluationError, match="no such folder"):
        resolve_source(str(tmp_path / "missing") + "/x/y")
    with pytest.raises(EvaluationError, match="cannot tell"):
        resolve_source("someone/model")


def test_adapter_folder_is_merged_into_the_base_it_names(tmp_path):
    """final/adapter of a LoRA run: base from training_config.yaml, adapter merged."""
    from peft import PeftModel

    from sam_hf.models.lora import apply_lora, merge_to_base, save_adapter
    from sam_hf.models.sam2 import build_sam2

    cfg = _sam2_cfg(model_name_or_path="sam2-tiny", seed=5, use_lora=True)
    model, _ = build_sam2(cfg)
    peft_model = apply_lora(model, cfg, "sam2")
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    final = tmp_path / "run" / "final"
    save_adapter(peft_model, final)
    (final / "training_config.yaml").write_text(
        yaml.safe_dump({"model_name_or_path": "sam2-tiny", "seed": 5, "resolution": SAM2_RES})
    )
    src = resolve_source(str(tmp_path / "run"))
    assert (src.kind, src.family, src.base, src.seed) == ("adapter", "sam2", "sam2-tiny", 5)
    loaded = load_model(src)
    base, _ = build_sam2(cfg)
    want = merge_to_base(PeftModel.from_pretrained(base, str(final / "adapter")))
    got = loaded.module.model.state_dict()
    for k, v in want.state_dict().items():
        assert torch.equal(got[k], v), k
    assert not any("lora" in k for k in got)


def test_cli_errors_are_messages_not_tracebacks(workdir, tmp_path, capsys):
    rc = evaluate_cli.main(
        ["compare", "--sam2-baseline", "sam2-tiny", "--data", str(workdir["data"]),
         "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert rc == 2 and "--sam2-baseline needs --sam2" in capsys.readouterr().err
    rc = evaluate_cli.main(
        ["sam2", "--model", "sam2-tiny", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = evaluate_cli.main(
        ["sam3", "--model", "sam3-tiny", "--data", str(workdir["data"]), "--split", "test",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert rc == 2 and "splits ['train', 'validation']" in capsys.readouterr().err


def test_default_outputs_are_untracked_and_readme_commands_name_the_demo_data():
    """Reports go under outputs/ (ignored by git), and the README's evaluate commands read the
    folders the demos really write (their YAML's dataset_path, as is)."""
    import shlex

    assert all(v.startswith("outputs/") for v in evaluate_cli.DEFAULT_OUT.values())
    assert set(evaluate_cli.DEFAULT_OUT) == {"sam2", "sam3_tracker", "sam3", "compare"}
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/outputs/" in ignored and "/data/" in ignored
    demo_data = {
        fam: yaml.safe_load((ROOT / "recipes" / f"{fam}_demo.yaml").read_text())["dataset_path"]
        for fam in ("sam2", "sam3_tracker", "sam3")
    }
    commands = [
        shlex.split(line)
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("python scripts/evaluate.py ")
    ]
    assert {"sam2", "sam3", "compare"} <= {c[2] for c in commands} <= set(evaluate_cli.DEFAULT_OUT)
    for argv in commands:
        args = evaluate_cli.build_parser().parse_args(argv[2:])  # parses as printed
        assert args.data == demo_data.get(args.mode, demo_data["sam3"]), argv
        assert args.out is None or args.out.startswith("outputs/"), argv


# ------------------------------------------------------------------------------- run curves


def _trainer_state() -> dict:
    """A trainer_state.json as the HF Trainer writes it: log_history in logging order."""
    train = [
        (1, 2.5, 0.5, 1e-5, 3.0),
        (10, 1.5, 0.25, 1e-4, 2.0),
        (20, float("nan"), 0.2, 5e-5, 1.5),  # a non-finite loss is drawn as a gap
        (30, 1.0, 0.15, 2e-5, 1.2),
    ]
    history = [{"step": 0, "epoch": 0.0, "eval_mean_iou": 0.1, "eval_mean_dice": 0.2}]
    for step, loss, focal, lr, grad_norm in train:
        entry = {"step": step, "epoch": step / 10, "loss": loss, "loss_focal": focal}
        history.append({**entry, "learning_rate": lr, "grad_norm": grad_norm})
        if step in (10, 30):
            iou, dice = {10: (0.2, 0.3), 30: (0.4, 0.5)}[step]
            history.append(
                {
                    "step": step,
                    "epoch": step / 10,
                    "eval_mean_iou": iou,
                    "eval_mean_dice": dice,
                    "eval_num_objects": 10,
                    "eval_runtime": 0.5,  # timings are not metrics
                    "eval_samples_per_second": 8.0,
                }
            )
    history.append({"step": 30, "epoch": 3.0, "train_loss": 1.6, "train_runtime": 12.0})
    return {"global_step": 30, "best_global_step": 30, "best_metric": 0.4, "log_history": history}


def test_trainer_state_history_and_run_plots(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps(_trainer_state(), indent=2))
    results = {"best_global_step": 30, "metric_for_best_model": "eval_mean_iou"}
    (run / "eval_results.json").write_text(json.dumps(results))
    history = log_history(read_trainer_state(run / "trainer_state.json"))
    assert list(history["train"]) == [1, 10, 20, 30]  # the end-of-training summary is no step
    assert history["train"][10] == {
        "loss": 1.5,
        "loss_focal": 0.25,
        "learning_rate": pytest.approx(1e-4),
        "grad_norm": 2.0,
    }
    assert np.isnan(history["train"][20]["loss"])
    assert history["eval"] == {
        0: {"mean_iou": 0.1, "mean_dice": 0.2},
        10: {"mean_iou": 0.2, "mean_dice": 0.3, "num_objects": 10.0},
        30: {"mean_iou": 0.4, "mean_dice": 0.5, "num_objects": 10.0},
    }
    written = plot_run(run, tmp_path / "plots")
    assert [p.name for p in written] == ["loss_curves.png", "eval_curves.png"]
    assert all(p.stat().st_size > 5000 for p in written)
    assert plot_run_cli.main([str(run)]) == 0 and (run / "eval_curves.png").is_file()
    assert plot_run_cli.main([str(tmp_path / "nope")]) == 2
    # a state without anything to draw, or not JSON at all, is a one-line error
    (run / "trainer_state.json").write_text(json.dumps({"log_history": []}))
    assert plot_run_cli.main([str(run)]) == 2
    (run / "trainer_state.json").write_text("{")
    assert plot_run_cli.main([str(run)]) == 2


def test_sam3_vocabulary_falls_back_to_the_evaluated_split_without_a_train_split() -> None:
    """A validation-only dataset (e.g. `evaluate.py sam3 --data` on a held-out set) takes its
    vocabulary negatives from the evaluated split instead of failing on the missing one."""
    from types import SimpleNamespace

    import datasets

    from sam_hf.eval.run import _sam3_vocabulary

    ds = datasets.Dataset.from_dict({"image_id": ["a", "b"]})
    dd = datasets.DatasetDict({"validation": ds})
    settings = SimpleNamespace(train_split="train", max_train_samples=0)
    data: dict = {}
    cover = {"category": 0, "objects": 2, "with_phrase": 2}
    got = _sam3_vocabulary(dd, ds, "validation", settings, data, cover, [])
    assert got is ds and data["negative_vocabulary_split"] == "validation"
    with_train = datasets.DatasetDict({"train": ds.select([0]), "validation": ds})
    got = _sam3_vocabulary(with_train, ds, "validation", settings, {}, cover, [])
    assert list(got["image_id"]) == ["a"]
