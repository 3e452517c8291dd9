"""COCO-text, SA-Co and per-image JSON polygon converters: exactness against pycocotools, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sam_hf.data import rle
from sam_hf.data.report import ConversionError, Report
from sam_hf.data.schema import FEATURES, attributes_dict
from sam_hf.data.sources.coco import convert_coco_text
from sam_hf.data.sources.jsonpoly import convert_json_polygons
from sam_hf.data.sources.saco import convert_saco

H, W = 24, 32


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _crowd_rle() -> dict[str, Any]:
    """Uncompressed RLE (column-major run lengths) of a small blob."""
    m = np.zeros((H, W), np.uint8)
    m[2:9, 20:30] = 1
    m[5:7, 18:20] = 1
    flat = m.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [H, W], "counts": [int(c) for c in counts]}


def _compressed_rle() -> dict[str, Any]:
    m = np.zeros((H, W), np.uint8, order="F")
    m[15:22, 3:12] = 1
    enc = mask_utils.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": enc["counts"].decode("ascii")}


def coco_doc() -> dict[str, Any]:
    """Two images; polygons (one with two parts), compressed RLE, uncompressed crowd RLE,
    interleaved annotation order, noun phrases, attributes and negative phrases."""
    return {
        "images": [
            {
                "id": 7,
                "file_name": "a.png",
                "width": W,
                "height": H,
                "negative_phrases": ["pear", " "],
            },
            {"id": 3, "file_name": "sub/b.png", "width": W, "height": H},
        ],
        "categories": [{"id": 1, "name": "apple"}, {"id": 2, "name": "leaf"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [
                    [2.5, 2.0, 12.0, 3.5, 9.0, 11.0],
                    [20, 14, 26, 14, 26, 20, 20, 20],
                ],
                "bbox": [2.5, 2.0, 23.5, 18.0],
                "noun_phrase": "ripe red apple",
                "attributes": {"ripeness": "ripe", "color": "red", "occluded": True},
            },
            {
                "id": 11,
                "image_id": 3,
                "category_id": 2,
                "iscrowd": 1,
                "segmentation": _crowd_rle(),
                "noun_phrase": "leaves",
            },
            {
                "id": 12,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": _compressed_rle(),
                "bbox": [3, 15, 9, 7],
                "noun_phrase": "green apple",
            },
        ],
    }


def write_coco(root: Path, doc: dict[str, Any], name: str = "ann.json") -> tuple[Path, Path]:
    images = root / "images"
    for i, img in enumerate(doc["images"]):
        if not (images / img["file_name"]).exists():
            _image(
                images / img["file_name"], seed=i, size=(img.get("width", W), img.get("height", H))
            )
    path = root / name
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return images, path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _coco(tmp_path: Path, doc: dict[str, Any], cache: Path, **kw: Any):
    images, path = write_coco(tmp_path / "src", doc)
    report = Report()
    dd = convert_coco_text(images, path, cache_dir=cache, report=report, **kw)
    return dd, report, path


# ---------------------------------------------------------------------------------------------
# COCO-text
# ---------------------------------------------------------------------------------------------


def test_coco_masks_match_pycocotools_annToMask(tmp_path: Path, cache: Path) -> None:
    dd, report, path = _coco(tmp_path, coco_doc(), cache)
    ds = dd["train"]
    assert ds.features == FEATURES and len(ds) == 2
    coco = COCO(str(path))
    rows = {r["image_id"]: r for r in ds}
    assert list(rows) == ["7", "3"]  # images[] order
    for image_id, row in rows.items():
        ann_ids = [a["id"] for a in coco.dataset["annotations"] if a["image_id"] == int(image_id)]
        assert len(row["objects"]) == len(ann_ids)
        for ann_id, obj in zip(ann_ids, row["objects"]):  # file order kept
            expected = coco.annToMask(coco.anns[ann_id]).astype(bool)
            assert np.array_equal(rle.decode(obj["segmentation"]), expected), ann_id
            assert obj["area"] == expected.sum()
    a, b = rows["7"], rows["3"]
    assert [o["noun_phrase"] for o in a["objects"]] == ["ripe red apple", "green apple"]
    assert attributes_dict(a["objects"][0]["attributes"]) == {
        "ripeness": "ripe",
        "color": "red",
        "occluded": "true",
    }
    assert a["objects"][0]["bbox"] == [2.5, 2.0, 23.5, 18.0]
    assert a["negative_phrases"] == ["pear"]
    assert b["objects"][0]["iscrowd"] is True and b["objects"][0]["category"] == "leaf"
    assert report.skipped == {} and report.fixed == {}


def test_coco_missing_noun_phrase_needs_the_flag(tmp_path: Path, cache: Path) -> None:
    doc = coco_doc()
    del doc["annotations"][2]["noun_phrase"]
    with pytest.raises(ConversionError) as e:
        _coco(tmp_path, doc, cache)
    msg = str(e.value)
    assert "ann.json" in msg and "annotation id 12" in msg and "--noun-phrase-from-category" in msg
    dd, _, _ = _coco(tmp_path, doc, cache, noun_phrase_from_category=True)
    assert [o["noun_phrase"] for o in dd["train"][0]["objects"]] == ["ripe red apple", "apple"]
    dd, report, _ = _coco(tmp_path, doc, cache, on_error="skip")
    assert len(dd["train"][0]["objects"]) == 1 and report.skipped == {"missing_noun_phrase": 1}


def test_coco_polygon_with_fewer_than_3_points(tmp_path: Path, cache: Path) -> None:
    doc = coco_doc()
    # 4 numbers: pycocotools would silently read this as a *box*
    doc["annotations"][0]["segmentation"] = [[1, 1, 8, 8]]
    with pytest.raises(
        ConversionError, match=r"ann.json: annotation id 10: polygon part 0 has 2 points"
    ) as e:
        _coco(tmp_path, doc, cache)
    assert e.value.reason == "polygon_too_few_points"
    dd, report, _ = _coco(tmp_path, doc, cache, on_error="skip")
    assert [o["noun_phrase"] for o in dd["train"][0]["objects"]] == ["green apple"]
    assert report.skipped == {"polygon_too_few_points": 1}


def test_coco_coordinates_outside_image_are_clipped_and_counted(
    tmp_path: Path, cache: Path
) -> None:
    doc = coco_doc()
    doc["annotations"][0]["segmentation"] = [[-5.0, -3.0, 40.0, 2.0, 10.0, 30.0]]
    doc["annotations"][0]["bbox"] = [-5.0, -3.0, 45.0, 33.0]
    dd, report, path = _coco(tmp_path, doc, cache)  # not an error, even with on_error="raise"
    obj = dd["train"][0]["objects"][0]
    assert obj["bbox"] == [0.0, 0.0, W, H]
    coco = COCO(str(path))
    assert np.array_equal(
        rle.decode(obj["segmentation"]), coco.annToMask(coco.anns[10]).astype(bool)
    )
    assert report.fixed == {"clipped_coordinates": 1}
    assert "annotation id 10" in report.summary()


def test_coco_zero_area_object_is_dropped_and_counted(tmp_path: Path, cache: Path) -> None:
    doc = coco_doc()
    doc["annotations"][2]["segmentation"] = [[40, 30, 50, 30, 45, 40]]  # entirely outside
    doc["annotations"][2].pop("bbox")
    doc["annotations"][0]["segmentation"] = [[1, 1, 5, 1, 9, 1]]  # collinear: no pixels
    dd, report, _ = _coco(tmp_path, doc, cache)
    assert dd["train"][0]["objects"] == []
    assert report.fixed["zero_area_dropped"] == 2
    assert report.objects == 1  # the crowd annotation of the other image


def test_coco_unknown_image_id(tmp_path: Path, cache: Path) -> None:
    doc = coco_doc()
    doc["annotations"].append(
        {"id": 99, "image_id": 12345, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]}
    )
    with pytest.raises(
        ConversionError, match="ann.json: annotation id 99: annotation for unknown image id 12345"
    ):
        _coco(tmp_path, doc, cache)
    dd, report, _ = _coco(tmp_path, doc, cache, on_error="skip")
    assert report.skipped == {"unknown_image_id": 1} and report.objects == 3


def test_coco_duplicate_image_ids(tmp_path: Path, cache: Path) -> None:
    doc = coco_doc()
    doc["images"].append({"id": 7, "file_name": "c.png", "width": W, "height": H})
    with pytest.raises(
        ConversionError, match=r"ann.json: images\[2\] \(id 7\): duplicate image id 7"
    ):
        _coco(tmp_path, doc, cache)
    dd, report, _ = _coco(tmp_path, doc, cache, on_error="skip")
    assert len(dd["train"]) == 2 and report.skipped == {"duplicate_image_id": 1}


def test_coco_missing_and_corrupt_images(tmp_path: Path, cache: Path) -> None:
    doc = coco_doc()
    doc["images"].append({"id": 5, "file_name": "gone.png", "width": W, "height": H})
    images, path = write_coco(tmp_path / "src", doc)
    (images / "gone.png").unlink()
    with pytest.raises(ConversionError) as e:
        convert_coco_text(images, path, cache_dir=cache)
    assert str(images / "gone.png") in str(e.value) and "image id 5" in str(e.value)
    assert e.value.reason == "missing_image"
    (images / "gone.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ConversionError, match="corrupt or unreadable image") as e:
        convert_coco_text(images, path, cache_dir=cache)
    assert "gone.png" in str(e.value)
    report = Report()
    dd = convert_coco_text(images, path, cache_dir=cache, on_error="skip", report=report)
    assert len(dd["train"]) == 2 and report.skipped == {"corrupt_image": 1}


def test_coco_image_size_differs_from_annotations(tmp_path: Path, cache: Path) -> None:
    doc = coco_doc()
    doc["images"][1]["width"] = W + 8
    images, path = write_coco(tmp_path / "src", copy.deepcopy(doc))
    _image(images / "sub/b.png", size=(W, H))  # the real file is W wide
    with pytest.raises(
        ConversionError, match=rf"image id 3 .*declare {W + 8}x{H} \(WxH\) but the image is {W}x{H}"
    ):
        convert_coco_text(images, path, cache_dir=cache)
    # an RLE whose size is not its image's is an error for that annotation
    doc = coco_doc()
    doc["annotations"][2]["segmentation"]["size"] = [H, W + 1]
    doc["annotations"][2]["segmentation"]["counts"] = rle.encode(np.zeros((H, W + 1), bool))[
        "counts"
    ]
    with pytest.raises(ConversionError, match=r"annotation id 12: RLE size \[24, 33\]"):
        _coco(tmp_path / "rle", doc, cache)
    dd, report, _ = _coco(tmp_path / "rle", doc, cache, on_error="skip")
    assert report.skipped == {"mask_size_mismatch": 1} and len(dd["train"][0]["objects"]) == 1


def test_coco_empty_dataset(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ConversionError, match="ann.json: empty dataset"):
        _coco(tmp_path, {"images": [], "annotations": [], "categories": []}, cache)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConversionError, match="broken.json: cannot parse annotation file"):
        convert_coco_text(tmp_path, tmp_path / "broken.json", cache_dir=cache)


def test_coco_cache_hit(tmp_path: Path, cache: Path) -> None:
    _, r1, _ = _coco(tmp_path, coco_doc(), cache)
    images, path = tmp_path / "src/images", tmp_path / "src/ann.json"
    r2 = Report()
    convert_coco_text(images, path, cache_dir=cache, report=r2)
    assert not r1.from_cache and r2.from_cache


# ---------------------------------------------------------------------------------------------
# SA-Co
# ---------------------------------------------------------------------------------------------


def saco_doc() -> dict[str, Any]:
    rle_a = _compressed_rle()
    return {
        "images": [
            {"id": 1, "file_name": "x.png", "text_input": "green apple", "width": W, "height": H},
            {"id": 2, "file_name": "x.png", "text_input": "banana", "width": W, "height": H},
            {"id": 3, "file_name": "y.png", "text_input": "leaf", "width": W, "height": H},
            {"id": 4, "file_name": "x.png", "text_input": "leaf", "width": W, "height": H},
        ],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 4,
                "category_id": 1,
                "bbox": [0.625, 0.25, 0.25, 0.25],
                "segmentation": _crowd_rle(),
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "bbox": [3 / W, 15 / H, 9 / W, 7 / H],
                "segmentation": rle_a,
            },
            {
                "id": 3,
                "image_id": 3,
                "category_id": 1,
                "bbox": [0.5, 0.5, 0.75, 0.25],
                "segmentation": rle_a,
            },
        ],
    }


def test_saco_pairs_become_rows_with_phrases_and_negatives(tmp_path: Path, cache: Path) -> None:
    images, path = write_coco(tmp_path / "src", saco_doc())
    report = Report()
    dd = convert_saco(images, path, cache_dir=cache, report=report)
    ds = dd["test"]
    assert ds.features == FEATURES and ds["image_id"] == ["x.png", "y.png"]
    x, y = ds[0], ds[1]
    # pair order, then annotation order: "green apple" (pair 1) before "leaf" (pair 4)
    assert [o["noun_phrase"] for o in x["objects"]] == ["green apple", "leaf"]
    assert x["negative_phrases"] == ["banana"]
    assert x["objects"][0]["category"] == "object"
    np.testing.assert_allclose(x["objects"][0]["bbox"], [3, 15, 9, 7], atol=1e-4)
    np.testing.assert_allclose(x["objects"][1]["bbox"], [20, 6, 8, 6], atol=1e-4)
    assert np.array_equal(rle.decode(x["objects"][1]["segmentation"]), rle.decode(_crowd_rle()))
    # y's box runs past the right edge: clipped and counted
    np.testing.assert_allclose(y["objects"][0]["bbox"], [16, 12, 16, 6], atol=1e-4)
    assert y["negative_phrases"] == [] and report.fixed == {"clipped_coordinates": 1}


def test_saco_bad_input(tmp_path: Path, cache: Path) -> None:
    doc = saco_doc()
    doc["images"].append(
        {"id": 5, "file_name": "x.png", "text_input": "banana", "width": W, "height": H}
    )
    doc["annotations"].append(
        {"id": 9, "image_id": 77, "bbox": [0, 0, 0.1, 0.1], "segmentation": _crowd_rle()}
    )
    images, path = write_coco(tmp_path / "src", doc)
    with pytest.raises(
        ConversionError, match=r"images\[4\] \(id 5\): phrase 'banana' already given for 'x.png'"
    ):
        convert_saco(images, path, cache_dir=cache)
    report = Report()
    dd = convert_saco(images, path, cache_dir=cache, on_error="skip", report=report)
    assert report.skipped == {"duplicate_phrase": 1, "unknown_image_id": 1}
    assert dd["test"][0]["negative_phrases"] == ["banana"]
    doc = saco_doc()
    doc["images"][0]["id"] = 2
    images, path = write_coco(tmp_path / "dup", doc)
    with pytest.raises(ConversionError, match="duplicate image id 2"):
        convert_saco(images, path, cache_dir=cache)


# ---------------------------------------------------------------------------------------------
# Per-image JSON polygons
# ---------------------------------------------------------------------------------------------


def write_jsonpoly(
    root: Path, split: str, stem: str, instances: list[dict[str, Any]], **extra: Any
) -> Path:
    _image(root / split / "images" / f"{stem}.png", seed=len(stem))
    ann = root / split / "annotations" / f"{stem}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(
        json.dumps({"image_id": stem, "width": W, "height": H, "instances": instances, **extra})
    )
    return ann


POLY = [[2.5, 2.0, 12.0, 3.5, 9.0, 11.0], [20, 14, 26, 14, 26, 20, 20, 20]]


def test_json_polygons_match_coco_rasterisation(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "src"
    write_jsonpoly(
        root,
        "train",
        "img1",
        [
            {
                "instance_id": 1,
                "label": "apple",
                "segmentation": {"polygon": POLY},
                "attributes": {"color": "red", "ripeness": "ripe"},
            },
            {
                "instance_id": 2,
                "label": "apple",
                "segmentation": {"polygon": [[1, 15, 8, 15, 4, 22]]},
            },
        ],
        negative_phrases=["pear"],
    )
    write_jsonpoly(root, "val", "img2", [])
    _image(root / "test" / "images" / "img3.png")
    dd = convert_json_polygons(root, cache_dir=cache)
    assert list(dd) == ["train", "validation", "test"]
    row = dd["train"][0]
    assert row["image_id"] == "img1" and row["negative_phrases"] == ["pear"]
    first, second = row["objects"]
    assert (first["category"], first["noun_phrase"]) == ("apple", "apple")
    assert attributes_dict(first["attributes"]) == {"color": "red", "ripeness": "ripe"}
    # same polygons through pycocotools' annToMask
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": W, "height": H}],
        "annotations": [
            {"id": 1, "image_id": 1, "segmentation": POLY, "iscrowd": 0, "category_id": 1}
        ],
        "categories": [{"id": 1, "name": "apple"}],
    }
    coco.createIndex()
    assert np.array_equal(
        rle.decode(first["segmentation"]), coco.annToMask(coco.anns[1]).astype(bool)
    )
    ys, xs = np.nonzero(rle.decode(second["segmentation"]))
    assert second["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert dd["validation"][0]["objects"] == [] and dd["test"][0]["objects"] == []


def test_json_polygons_bad_input(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "src"
    good = {"instance_id": 1, "label": "apple", "segmentation": {"polygon": POLY}}
    write_jsonpoly(
        root,
        "train",
        "a",
        [good, {"instance_id": 7, "label": "apple", "segmentation": {"polygon": [[1, 2, 3, 4]]}}],
    )
    with pytest.raises(
        ConversionError, match=r"a.json: instance_id 7: polygon part 0 has 2 points"
    ):
        convert_json_polygons(root, cache_dir=cache)
    orphan = root / "train" / "annotations" / "ghost.json"
    orphan.write_text(json.dumps({"instances": []}))
    write_jsonpoly(root, "train", "b", [good])
    (root / "train" / "annotations" / "b.json").unlink()  # image without its annotation file
    write_jsonpoly(root, "train", "c", [good])
    (root / "train" / "annotations" / "c.json").write_text(
        json.dumps({"image_id": "a", "instances": []})
    )
    report = Report()
    dd = convert_json_polygons(root, cache_dir=cache, on_error="skip", report=report)
    assert report.skipped == {
        "polygon_too_few_points": 1,
        "unknown_image_id": 1,
        "missing_annotation": 1,
        "duplicate_image_id": 1,
    }
    assert dd["train"]["image_id"] == ["a"] and len(dd["train"][0]["objects"]) == 1
    assert "ghost.json: image id ghost" in report.summary()


def _script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_prepare_saco_and_json_polygons(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datasets

    images, path = write_coco(tmp_path / "saco", saco_doc())
    out = tmp_path / "saco_out"
    args = [
        "--images",
        str(images),
        "--annotations",
        str(path),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
    ]
    assert _script("prepare_saco").main(args) == 0
    assert "test: 2 images, 3 objects" in capsys.readouterr().out
    assert datasets.load_from_disk(str(out))["test"][0]["negative_phrases"] == ["banana"]
    assert "| test | 2 | 3 |" in (out / "README.md").read_text()

    root = tmp_path / "poly"
    write_jsonpoly(
        root,
        "train",
        "a",
        [{"instance_id": 1, "label": "apple", "segmentation": {"polygon": POLY}}],
    )
    write_jsonpoly(root, "train", "b", [])
    out = tmp_path / "poly_out"
    args = [
        "--source",
        str(root),
        "--out",
        str(out),
        "--val-fraction",
        "0.5",
        "--cache-dir",
        str(cache),
    ]
    assert _script("prepare_json_polygons").main(args) == 0
    dd = datasets.load_from_disk(str(out))
    assert (len(dd["train"]), len(dd["validation"])) == (1, 1)
    (root / "train/annotations/b.json").write_text('{"instances": [{"instance_id": 4}]}')
    assert _script("prepare_json_polygons").main([*args[:2], "--out", str(tmp_path / "x")]) == 2
    assert "b.json: instance_id 4: instance needs a non-empty 'label'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
