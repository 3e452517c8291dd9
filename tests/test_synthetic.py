"""The synthetic orchard and shapes generators: layout, determinism, exact masks, phrases."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sam_hf.data import rle
from sam_hf.data.schema import FEATURES, attributes_dict
from sam_hf.data.synthetic import shape_rows, shapes
from sam_hf.data.synthetic.drawing import mask_png
from sam_hf.data.synthetic.orchard import (
    MIN_VISIBLE_AREA,
    iter_orchard_rows,
    make_orchard_dataset,
    make_synthetic_orchard,
    render_orchard_image,
    split_indices,
)
from sam_hf.data.synthetic.orchard_apples import (
    COLORS,
    HEALTH,
    OTHER_OBJECTS,
    RIPENESS,
    apple_phrase,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = (96, 128)  # (H, W): not square, so a swapped height/width shows up
NUM, SEED = 6, 3


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def orchard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("orchard")
    summary = make_synthetic_orchard(out, NUM, SEED, image_size=SIZE, test_fraction=0.34)
    return out, summary


def _expected_phrase(attrs: dict[str, str]) -> str:
    base = f"{attrs['ripeness']} {attrs['color']} apple"
    return "damaged " + base if attrs["health"] == "damaged" else base


def _absent(phrase: str, objects: list[dict[str, str]]) -> bool:
    """True when no apple in ``objects`` (attribute dicts) is described by ``phrase``."""
    words = phrase.split()
    if words[-1] != "apple":
        return phrase in OTHER_OBJECTS
    damaged = words[0] == "damaged"
    ripeness, color = words[-3], words[-2]
    return not any(
        a["ripeness"] == ripeness
        and a["color"] == color
        and (not damaged or a["health"] == "damaged")
        for a in objects
    )


# ------------------------------------------------------------------------------- orchard files


def test_layout_is_minneapple_and_coco_text(orchard: tuple[Path, dict]) -> None:
    out, _ = orchard
    assert sorted(p.name for p in out.iterdir()) == ["coco_text", "minneapple"]
    assert sorted(p.name for p in (out / "minneapple").iterdir()) == ["test", "train"]
    stems = {}
    for split in ("train", "test"):
        base = out / "minneapple" / split
        assert sorted(p.name for p in base.iterdir()) == ["images", "masks"]
        images = sorted(p.name for p in (base / "images").iterdir())
        assert images == sorted(p.name for p in (base / "masks").iterdir())
        stems[split] = images
    assert len(stems["train"]) == 4 and len(stems["test"]) == 2
    assert not set(stems["train"]) & set(stems["test"])
    coco_images = sorted(p.name for p in (out / "coco_text" / "images").iterdir())
    assert coco_images == sorted(stems["train"] + stems["test"])
    ann_dir = out / "coco_text" / "annotations"
    assert sorted(p.name for p in ann_dir.iterdir()) == ["train.json", "val.json"]
    # COCO train/val are exactly the MinneApple train/test images, with the same bytes.
    for split, name in (("train", "train"), ("test", "val")):
        doc = json.loads((ann_dir / f"{name}.json").read_text())
        assert sorted(i["file_name"] for i in doc["images"]) == stems[split]
        assert doc["categories"] == [{"id": 1, "name": "apple"}]
        for stem in stems[split]:
            a = (out / "minneapple" / split / "images" / stem).read_bytes()
            assert a == (out / "coco_text" / "images" / stem).read_bytes()


def test_same_seed_same_bytes_other_seed_differs(
    orchard: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = orchard
    make_synthetic_orchard(tmp_path / "again", NUM, SEED, image_size=SIZE, test_fraction=0.34)
    first, second = _tree(out), _tree(tmp_path / "again")
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)

    make_synthetic_orchard(tmp_path / "other", NUM, SEED + 1, image_size=SIZE, test_fraction=0.34)
    other = _tree(tmp_path / "other")
    pngs = [k for k in first if k.startswith("coco_text/images/")]
    assert all(first[k] != other[k] for k in pngs)


def test_images_rgb_and_masks_8bit_with_contiguous_ids(orchard: tuple[Path, dict]) -> None:
    out, _ = orchard
    for split in ("train", "test"):
        for path in sorted((out / "minneapple" / split / "masks").iterdir()):
            mask = Image.open(path)
            image = Image.open(out / "minneapple" / split / "images" / path.name)
            assert image.mode == "RGB" and mask.mode == "L"
            assert image.size == mask.size == (SIZE[1], SIZE[0])
            arr = np.asarray(mask)
            assert arr.dtype == np.uint8 and arr.ndim == 2
            n = int(arr.max())
            assert n > 0
            ids, counts = np.unique(arr, return_counts=True)
            assert ids.tolist() == list(range(n + 1))  # 0 = background, then 1..N, no gaps
            assert counts[1:].min() >= MIN_VISIBLE_AREA


def test_coco_annotations_decode_to_minneapple_masks(orchard: tuple[Path, dict]) -> None:
    out, _ = orchard
    for split, name in (("train", "train"), ("test", "val")):
        coco = COCO(str(out / "coco_text" / "annotations" / f"{name}.json"))
        for img in coco.dataset["images"]:
            mask = np.asarray(Image.open(out / "minneapple" / split / "masks" / img["file_name"]))
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            assert len(anns) == int(mask.max())
            for k, ann in enumerate(anns, 1):
                decoded = coco.annToMask(ann).astype(bool)
                assert np.array_equal(decoded, mask == k)
                ys, xs = np.nonzero(decoded)
                assert ann["area"] == decoded.sum()
                assert ann["bbox"] == [
                    xs.min(),
                    ys.min(),
                    xs.max() - xs.min() + 1,
                    ys.max() - ys.min() + 1,
                ]
                assert ann["iscrowd"] == 0 and ann["category_id"] == 1
                assert isinstance(ann["segmentation"]["counts"], str)


def test_noun_phrases_match_attributes_and_negatives_are_absent(
    orchard: tuple[Path, dict],
) -> None:
    out, _ = orchard
    for name in ("train", "val"):
        doc = json.loads((out / "coco_text" / "annotations" / f"{name}.json").read_text())
        by_image: dict[int, list[dict[str, str]]] = {i["id"]: [] for i in doc["images"]}
        for ann in doc["annotations"]:
            attrs = ann["attributes"]
            assert list(attrs) == ["color", "ripeness", "health"]
            assert attrs["color"] in COLORS and attrs["ripeness"] in RIPENESS
            assert attrs["health"] in HEALTH
            assert ann["noun_phrase"] == _expected_phrase(attrs)
            by_image[ann["image_id"]].append(attrs)
        for img in doc["images"]:
            negatives = img["negative_phrases"]
            assert negatives and len(set(negatives)) == len(negatives)
            assert sum(p in OTHER_OBJECTS for p in negatives) == 2
            for phrase in negatives:
                assert _absent(phrase, by_image[img["id"]]), (img["file_name"], phrase)


def test_summary_counts_match_the_files(orchard: tuple[Path, dict]) -> None:
    out, summary = orchard
    assert summary["images"] == {"train": 4, "test": 2, "total": NUM}
    counts = {"color": Counter(), "ripeness": Counter(), "health": Counter()}
    total = {}
    for split, name in (("train", "train"), ("test", "val")):
        doc = json.loads((out / "coco_text" / "annotations" / f"{name}.json").read_text())
        total[split] = len(doc["annotations"])
        for ann in doc["annotations"]:
            for key, value in ann["attributes"].items():
                counts[key][value] += 1
    assert summary["instances"] == {**total, "total": total["train"] + total["test"]}
    for key, values in (("color", COLORS), ("ripeness", RIPENESS), ("health", HEALTH)):
        assert summary["attributes"][key] == {v: counts[key][v] for v in values}


def test_existing_output_needs_overwrite_and_nothing_partial_is_left(
    orchard: tuple[Path, dict], tmp_path: Path
) -> None:
    out = tmp_path / "data"
    make_synthetic_orchard(out, 2, 0, image_size=(48, 48))
    with pytest.raises(FileExistsError, match="minneapple"):
        make_synthetic_orchard(out, 3, 0, image_size=(48, 48))
    summary = make_synthetic_orchard(out, 3, 0, image_size=(48, 48), overwrite=True)
    assert summary["images"]["total"] == 3
    assert len(list((out / "coco_text" / "images").iterdir())) == 3
    assert sorted(p.name for p in out.iterdir()) == ["coco_text", "minneapple"]  # no temp dir


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_images": 0}, "num_images"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"image_size": (8, 64)}, "image_size"),
    ],
)
def test_bad_arguments_raise_before_writing(kwargs: dict, message: str, tmp_path: Path) -> None:
    args = {"num_images": 2, "seed": 0, "image_size": (32, 32), "test_fraction": 0.5} | kwargs
    with pytest.raises(ValueError, match=message):
        make_synthetic_orchard(tmp_path / "x", **args)
    assert not (tmp_path / "x" / "minneapple").exists()


def test_split_is_seeded_disjoint_and_complete() -> None:
    train, test = split_indices(20, 5, 0.25)
    assert (train, test) == split_indices(20, 5, 0.25)
    assert len(test) == 5 and sorted(train + test) == list(range(20))
    assert split_indices(2, 0, 0.1)[1] != []  # at least one test image
    assert split_indices(1, 0, 0.5) == ([0], [])
    assert split_indices(4, 0, 0.0) == ([0, 1, 2, 3], [])


def test_masks_above_255_instances_are_16bit() -> None:
    label = np.arange(300 * 4, dtype=np.uint16).reshape(30, 40) // 4 + 1
    decoded = Image.open(io.BytesIO(mask_png(label)))
    assert decoded.mode.startswith("I;16")
    assert np.array_equal(np.asarray(decoded), label)
    small = Image.open(io.BytesIO(mask_png(np.minimum(label, 255))))
    assert small.mode == "L"


def test_attribute_correlations_follow_the_orchard() -> None:
    attrs = [a for i in range(16) for a in render_orchard_image(11, i, (64, 64)).attributes]
    unripe = [a for a in attrs if a["ripeness"] == "unripe"]
    ripe = [a for a in attrs if a["ripeness"] == "ripe"]
    assert len(unripe) > 30 and len(ripe) > 30
    assert sum(a["color"] == "green" for a in unripe) / len(unripe) > 0.6
    assert sum(a["color"] in ("red", "yellow") for a in ripe) / len(ripe) > 0.6


# --------------------------------------------------------------------------------- rows / CLI


def test_rows_match_files_and_validate_against_features(orchard: tuple[Path, dict]) -> None:
    out, _ = orchard
    rows = list(iter_orchard_rows(NUM, SEED, SIZE))
    ds = datasets.Dataset.from_list(rows, features=FEATURES)
    assert ds.features == FEATURES and len(ds) == NUM
    for row in rows:
        stem = row["image_id"]
        png = (out / "coco_text" / "images" / f"{stem}.png").read_bytes()
        assert row["image"]["bytes"] == png
        split = (
            "train" if (out / "minneapple" / "train" / "masks" / f"{stem}.png").exists() else "test"
        )
        mask = np.asarray(Image.open(out / "minneapple" / split / "masks" / f"{stem}.png"))
        assert (row["height"], row["width"]) == SIZE
        masks = rle.decode_many([o["segmentation"] for o in row["objects"]], *SIZE)
        assert masks.shape[0] == int(mask.max())
        for k, m in enumerate(masks, 1):
            assert np.array_equal(m, mask == k)
        for obj in row["objects"]:
            assert obj["noun_phrase"] == _expected_phrase(attributes_dict(obj["attributes"]))
            assert obj["category"] == "apple"


def test_make_orchard_dataset_is_cached(tmp_path: Path) -> None:
    first = make_orchard_dataset(2, 1, (48, 64), cache_dir=str(tmp_path))
    arrow = [Path(f["filename"]) for f in first.cache_files]
    stamps = [p.stat().st_mtime_ns for p in arrow]
    second = make_orchard_dataset(2, 1, (48, 64), cache_dir=str(tmp_path))
    assert first.features == FEATURES and len(first) == 2
    # Loaded from the same Arrow files, which were not rewritten.
    assert [Path(f["filename"]) for f in second.cache_files] == arrow
    assert [p.stat().st_mtime_ns for p in arrow] == stamps
    assert first[1]["image"].size == (64, 48)


def test_cli_writes_layout_and_prints_summary(tmp_path: Path) -> None:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "make_synthetic_orchard.py"),
        "--out",
        str(tmp_path / "o"),
        "--num-images",
        "3",
        "--seed",
        "2",
        "--image-size",
        "40",
        "56",
        "--test-fraction",
        "0.34",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["images"] == {"train": 2, "test": 1, "total": 3}
    assert summary["image_size"] == [40, 56]
    for sub in ("train/images", "train/masks", "test/images", "test/masks"):
        assert (tmp_path / "o" / "minneapple" / sub).is_dir()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr


# ------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("style", ["shapes", "clutter"])
def test_shape_rows_validate_and_describe_what_is_drawn(tmp_path: Path, style: str) -> None:
    rows = list(shape_rows.iter_shape_rows(8, 4, (64, 80), style))
    ds = datasets.Dataset.from_list(rows, features=FEATURES)
    assert len(ds) == 8 and ds.features == FEATURES
    for row in rows:
        assert Image.open(io.BytesIO(row["image"]["bytes"])).size == (80, 64)
        present = set()
        masks = rle.decode_many([o["segmentation"] for o in row["objects"]], 64, 80)
        assert masks.shape[0] >= 1
        assert masks.sum(0).max() == 1  # visible parts only: no pixel belongs to two shapes
        for obj, m in zip(row["objects"], masks):
            attrs = attributes_dict(obj["attributes"])
            assert set(attrs) == {"color", "shape"}
            assert attrs["color"] in shapes.COLORS and attrs["shape"] in shapes.SHAPES
            assert obj["category"] == attrs["shape"]
            assert obj["noun_phrase"] == f"{attrs['color']} {attrs['shape']}"
            assert "apple" not in obj["noun_phrase"]
            assert m.sum() == obj["area"] >= shapes.MIN_VISIBLE_AREA
            present.add(obj["noun_phrase"])
        assert row["negative_phrases"]
        assert not present & set(row["negative_phrases"])
        for phrase in row["negative_phrases"]:
            color, shape = phrase.split()
            assert color in shapes.COLORS and shape in shapes.SHAPES


@pytest.mark.parametrize("style", ["shapes", "clutter"])
def test_shapes_are_deterministic_and_cached(tmp_path: Path, style: str) -> None:
    a = [r["image"]["bytes"] for r in shape_rows.iter_shape_rows(3, 9, (48, 48), style)]
    b = [r["image"]["bytes"] for r in shape_rows.iter_shape_rows(3, 9, (48, 48), style)]
    c = [r["image"]["bytes"] for r in shape_rows.iter_shape_rows(3, 10, (48, 48), style)]
    assert a == b and all(x != y for x, y in zip(a, c))
    ds = shape_rows.make_shapes_dataset(3, 9, (48, 48), cache_dir=str(tmp_path), style=style)
    assert ds.features == FEATURES and len(ds) == 3
    assert ds[0]["image_id"] == "shapes_00000"
    assert np.array_equal(np.asarray(ds[2]["image"]), np.asarray(Image.open(io.BytesIO(a[2]))))


def test_clutter_objects_are_many_small_and_partly_hidden() -> None:
    """What the clutter style is for: many objects, mostly small, some partly hidden."""
    from sam_hf.data.synthetic import clutter

    rows = list(shape_rows.iter_shape_rows(12, 2, (128, 128), "clutter"))
    areas = np.array([o["area"] for r in rows for o in r["objects"]])
    assert len(areas) >= 3 * 12 and np.median(areas) < 0.01 * 128 * 128  # many, mostly small
    # occlusion: an object's visible mask falls short of the shape it was drawn as
    rng = np.random.default_rng(0)
    whole = clutter.shape_mask(rng, "circle", 30.0, 30.0, 10.0, 64, 64)
    assert whole.sum() > 250  # the helper draws full shapes; the renderer cuts them
    cut = [
        o
        for r in rows
        for o in r["objects"]
        if attributes_dict(o["attributes"])["shape"] == "circle"
        and o["area"] < 0.8 * np.pi * (max(o["bbox"][2], o["bbox"][3]) / 2) ** 2
    ]
    assert cut, "no circle of 12 clutter images is partly hidden"
    with pytest.raises(ValueError, match="unknown shapes style"):
        list(shape_rows.iter_shape_rows(1, 0, (32, 32), "fancy"))


def test_zoom_is_the_centre_of_a_larger_scene():
    close = render_orchard_image(3, 5, (64, 80), zoom=2.0)
    wide = render_orchard_image(3, 5, (128, 160))
    np.testing.assert_array_equal(close.image, wide.image[32:96, 40:120])
    ids = np.unique(close.label_map)
    assert list(ids[ids > 0]) == list(range(1, len(close.attributes) + 1))
    # every kept instance is one of the wide frame's, seen through the same window
    crop = wide.label_map[32:96, 40:120]
    for k in range(1, len(close.attributes) + 1):
        src = np.unique(crop[close.label_map == k])
        assert len(src) == 1 and (crop == src[0]).sum() == (close.label_map == k).sum()
        assert close.attributes[k - 1] == wide.attributes[src[0] - 1]
    present = {apple_phrase(a) for a in close.attributes}
    assert not present & set(close.negative_phrases)
