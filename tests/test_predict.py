"""scripts/predict.py: COCO results that pycocotools loads against the split they came from."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from scripts_loader import load_script

from sam_hf.data import rle
from sam_hf.data.sources.coco import convert_coco_text

ROOT = Path(__file__).resolve().parents[1]


predict_cli = load_script("predict")

SAM3_RES = 112


def _quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _load_res(coco: COCO, results: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return coco.loadRes(str(results))


@pytest.fixture(scope="module")
def setup(orchard, confident_sam3) -> dict:
    raw = orchard(num_images=8, seed=5, image_size=(80, 112))
    coco = raw / "coco_text"
    return {"root": raw.parent, "images": coco / "images", "val": coco / "annotations" / "val.json",
            "sam3": confident_sam3(seed=42, resolution=SAM3_RES)}  # fmt: skip


def test_text_predictions_load_against_the_split_json(setup, tmp_path):
    out = tmp_path / "out"
    rc = predict_cli.main(
        ["--model", str(setup["sam3"]), "--images", str(setup["images"]),
         "--text", "apple", "ripe red apple", "--coco-json", str(setup["val"]),
         "--out", str(out), "--batch-size", "2", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    gt = _quiet_coco(setup["val"])
    results = json.loads((out / "predictions.json").read_text())
    assert results, "the test model should keep some masks"
    dt = _load_res(gt, out / "predictions.json")  # the Done-when check
    assert {a["image_id"] for a in dt.dataset["annotations"]} <= set(gt.getImgIds())
    val_ids = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
    for r in results:
        assert set(r) == {"image_id", "category_id", "segmentation", "score", "phrase"}
        assert isinstance(r["segmentation"]["counts"], str)
        info = gt.imgs[r["image_id"]]
        assert rle.decode(r["segmentation"]).shape == (info["height"], info["width"])
        assert r["score"] >= 0.5
        assert r["category_id"] == 1  # "apple", and "ripe red apple" contains it
    assert {r["phrase"] for r in results} <= {"apple", "ripe red apple"}
    # only the validation images (listed in val.json) were predicted, each with an overlay
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert overlays == sorted(val_ids)
    meta = json.loads((out / "images.json").read_text())
    assert {i["id"] for i in meta["images"]} == set(val_ids.values())


def test_preprocessing_equals_the_evaluation_transform(setup):
    from transformers import Sam3Processor

    from sam_hf.data.transforms import SegmentationDataset

    ds = convert_coco_text(setup["images"], setup["val"], split="validation")["validation"]
    ip = Sam3Processor.from_pretrained(setup["sam3"]).image_processor
    eval_ds = SegmentationDataset(ds, SAM3_RES, ip.image_mean, ip.image_std, 0, train=False)
    gt = json.loads(setup["val"].read_text())
    name = {str(i["id"]): i["file_name"] for i in gt["images"]}
    for i in range(len(ds)):
        s = eval_ds[i]
        img = Image.open(setup["images"] / name[s["image_id"]])
        x = predict_cli.preprocess(img, SAM3_RES, ip.image_mean, ip.image_std)
        # same PIL resize, then x / 255, - mean, / std: each a correctly rounded IEEE operation
        # on the same values (the memory layout does not matter to elementwise ops): bitwise
        assert torch.equal(x, s["pixel_values"])


def test_image_ids_from_a_json_beside_integer_stems_or_running_index(setup, tmp_path):
    gt = json.loads(setup["val"].read_text())
    # 1. exported layout: <dir>/images/<files>, <dir>/annotations/val.json
    exp = tmp_path / "export"
    (exp / "images").mkdir(parents=True)
    (exp / "annotations").mkdir()
    shutil.copy(setup["val"], exp / "annotations" / "val.json")
    for img in gt["images"]:
        shutil.copy(setup["images"] / img["file_name"], exp / "images" / img["file_name"])
    files = predict_cli.list_images(exp / "images")
    pairs, coco, how = predict_cli.assign_image_ids(files, exp / "images", None)
    want = {i["file_name"]: i["id"] for i in gt["images"]}
    assert {f.name: i for f, i in pairs} == want and "found beside" in how
    rc = predict_cli.main(
        ["--model", str(setup["sam3"]), "--images", str(exp / "images"), "--text", "apple",
         "--out", str(tmp_path / "o1"), "--no-progress", "--no-overlays"]
    )  # fmt: skip
    assert rc == 0
    _load_res(_quiet_coco(setup["val"]), tmp_path / "o1" / "predictions.json")
    # 2. images named by their id
    ids_dir = tmp_path / "by_id"
    ids_dir.mkdir()
    for img in gt["images"]:
        shutil.copy(setup["images"] / img["file_name"], ids_dir / f"{img['id']}.png")
    pairs, _, how = predict_cli.assign_image_ids(predict_cli.list_images(ids_dir), ids_dir, None)
    assert sorted(i for _, i in pairs) == sorted(want.values()) and how == "integer file stems"
    # 3. nothing to go by: 1..N, and images.json is the COCO file the results load against
    plain = tmp_path / "plain" / "imgs"
    shutil.copytree(exp / "images", plain)
    rc = predict_cli.main(
        ["--model", str(setup["sam3"]), "--images", str(plain), "--text", "apple", "pear",
         "--out", str(tmp_path / "o3"), "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    meta = json.loads((tmp_path / "o3" / "images.json").read_text())
    assert [i["id"] for i in meta["images"]] == list(range(1, len(gt["images"]) + 1))
    assert meta["categories"] == [{"id": 1, "name": "apple"}, {"id": 2, "name": "pear"}]
    _load_res(_quiet_coco(tmp_path / "o3" / "images.json"), tmp_path / "o3" / "predictions.json")


def test_category_ids_follow_the_coco_categories():
    cats = {"categories": [{"id": 3, "name": "apple"}, {"id": 5, "name": "green apple"}]}
    ids, listed = predict_cli.category_ids(["Apple", "ripe green apple", "red apple", "pear"], cats)
    assert ids == {"Apple": 3, "ripe green apple": 5, "red apple": 3, "pear": 6}
    assert listed[-1] == {"id": 6, "name": "pear"}


def test_sam2_prompts_file_gives_one_mask_per_prompt(setup, tmp_path):
    gt = json.loads(setup["val"].read_text())
    names = [i["file_name"] for i in gt["images"]]
    prompts = {
        names[0]: [
            {"points": [[10, 12], [40, 30]], "labels": [1, 0]},
            {"box": [5, 5, 60, 50], "phrase": "apple"},
            {"box": [20, 10, 90, 70], "points": [[50, 40]]},
            {"points": [[70, 60]]},
        ],
        names[1]: [{"box": [0, 0, 111, 79]}],
    }
    pfile = tmp_path / "prompts.json"
    pfile.write_text(json.dumps(prompts))
    out = tmp_path / "out"
    rc = predict_cli.main(
        ["--model", "sam2-tiny", "--resolution", "128", "--images", str(setup["images"]),
         "--prompts", str(pfile), "--coco-json", str(setup["val"]), "--out", str(out),
         "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    results = json.loads((out / "predictions.json").read_text())
    ids = {i["file_name"]: i["id"] for i in gt["images"]}
    per_image = [[r for r in results if r["image_id"] == ids[n]] for n in names[:2]]
    assert [len(r) for r in per_image] == [4, 1]  # only images with prompts, one mask each
    assert [r["phrase"] for r in per_image[0]] == ["object", "apple", "object", "object"]
    assert [r["category_id"] for r in per_image[0]] == [2, 1, 2, 2]  # json's apple=1, new id
    assert all(np.isfinite(r["score"]) for r in results)
    _load_res(_quiet_coco(setup["val"]), out / "predictions.json")
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == sorted(names[:2])


def test_sam3_tracker_takes_the_same_prompts_file(setup, tmp_path, capsys):
    """SAM3's tracker head answers the SAM2 prompts file: one mask per prompt at the image's
    own size, its predicted IoU as score, an overlay per image; --text refuses it by name."""
    gt = json.loads(setup["val"].read_text())
    names = [i["file_name"] for i in gt["images"]]
    prompts = {
        names[0]: [
            {"points": [[10, 12], [40, 30]], "labels": [1, 0]},
            {"box": [5, 5, 60, 50], "phrase": "apple"},
            {"points": [[70, 60]]},
        ],
        names[1]: [{"box": [0, 0, 111, 79], "points": [[50, 40]]}],
    }
    pfile = tmp_path / "prompts.json"
    pfile.write_text(json.dumps(prompts))
    out = tmp_path / "out"
    args = ["--model", "sam3-tracker-tiny", "--resolution", "112", "--images", str(setup["images"])]
    rc = predict_cli.main([*args, "--prompts", str(pfile), "--coco-json", str(setup["val"]),
                           "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "predictions.json").read_text())
    ids = {i["file_name"]: i["id"] for i in gt["images"]}
    per_image = [[r for r in results if r["image_id"] == ids[n]] for n in names[:2]]
    assert [len(r) for r in per_image] == [3, 1]
    assert [r["phrase"] for r in per_image[0]] == ["object", "apple", "object"]
    sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    for r in results:
        assert rle.decode(r["segmentation"]).shape == sizes[r["image_id"]]
        assert np.isfinite(r["score"])
    _load_res(_quiet_coco(setup["val"]), out / "predictions.json")
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == sorted(names[:2])
    meta = json.loads((out / "images.json").read_text())
    assert meta["info"]["model"] == "sam3-tracker-tiny"
    rc = predict_cli.main([*args, "--text", "apple", "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 2 and "holds a SAM3 tracker model, but --text is for SAM3 models" in err
    assert not (tmp_path / "o2").exists()


def test_bad_inputs_are_reported(setup, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"orchard_00000.png": [{"box": [1, 2, 3]}]}))
    args = ["--model", "sam2-tiny", "--resolution", "128", "--out", str(tmp_path / "o")]
    assert predict_cli.main([*args, "--images", str(setup["images"]), "--prompts", str(bad)]) == 2
    assert "'box' must be [x0, y0, x1, y1]" in capsys.readouterr().err
    assert predict_cli.main([*args, "--images", str(tmp_path / "none"), "--prompts", str(bad)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    # a SAM3 folder given prompts (SAM2) says which family it holds
    rc = predict_cli.main(
        ["--model", str(setup["sam3"]), "--images", str(setup["images"]), "--prompts", str(bad),
         "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert rc == 2 and "holds a SAM3 model" in capsys.readouterr().err


def test_nothing_kept_writes_an_empty_list_and_warns(setup, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="sam_hf"):
        rc = predict_cli.main(
            ["--model", str(setup["sam3"]), "--images", str(setup["images"]), "--text", "apple",
             "--threshold", "1.0", "--out", str(out), "--no-progress", "--no-overlays"]
        )  # fmt: skip
    assert rc == 0
    assert json.loads((out / "predictions.json").read_text()) == []
    assert "loadRes cannot load" in caplog.text
