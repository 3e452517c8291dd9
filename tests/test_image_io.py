"""Reading images one way everywhere: EXIF orientation, high bit depth, alpha, unreadable files.

The scenes are tiny "orchards": bright red apples on green leaves at known places, so a mask
that lands on its apple has a red mean colour and one that lands on leaves a green one.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from scripts_loader import load_script
from test_convert_coco import write_coco
from test_converters import _convert

from sam_hf.data import rle
from sam_hf.data.images import load_image, orient_array, orient_bbox
from sam_hf.data.report import Report
from sam_hf.data.sources.coco import convert_coco_text
from sam_hf.data.transforms import SegmentationDataset

RED, LEAF = (220, 30, 30), (30, 120, 40)
SIZES = {"wide": (40, 24), "square": (32, 32)}  # displayed (width, height)
#: np.rot90 turns that give the stored (raw) pixels of an image displayed upright with the
#: EXIF orientation (6: the viewer turns the stored image 90 degrees clockwise; 8: counter-)
RAW_TURNS = {6: 1, 8: -1}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _scene(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """Displayed (upright) image, its instance-id map and the apples' (y, x, h, w) boxes."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = LEAF
    label = np.zeros((h, w), np.uint8)
    boxes = [(2, 3, 7, 10), (h - 10, w - 12, 8, 9)]
    for i, (y, x, bh, bw) in enumerate(boxes, start=1):
        img[y : y + bh, x : x + bw] = RED
        label[y : y + bh, x : x + bw] = i
    return img, label, boxes


def _to_raw(array: np.ndarray, orientation: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(array, RAW_TURNS[orientation]))


def _exif_jpeg(path: Path, displayed: np.ndarray, orientation: int) -> None:
    """Store ``displayed`` as a camera would: the pixels turned, plus the EXIF orientation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_to_raw(displayed, orientation)).save(
        path, "JPEG", quality=95, subsampling=0, exif=exif.tobytes()
    )
    with Image.open(path) as im:  # the setup itself: a viewer shows the upright scene
        shown = np.asarray(ImageOps.exif_transpose(im)).astype(int)
    assert shown.shape == displayed.shape and np.abs(shown - displayed).mean() < 4


def _mean_colours(image: np.ndarray, masks: list[np.ndarray]) -> list[np.ndarray]:
    assert all(m.shape == image.shape[:2] for m in masks), "masks and image differ in size"
    return [image[m].reshape(-1, 3).astype(float).mean(axis=0) for m in masks]


def _assert_on_apples(image: np.ndarray, masks: list[np.ndarray], scale: float = 1.0) -> None:
    """Every mask's mean colour is the apples' red, not the leaves' green."""
    assert len(masks) == 2
    for mean in _mean_colours(image, masks):
        r, g, _ = mean / scale
        assert r > 160 and g < 80, f"mask mean colour {mean} is not the apples' red"


def _assert_training_view_on_apples(ds) -> None:
    """What training and evaluation read (SegmentationDataset) agrees with the stored row."""
    sds = SegmentationDataset(ds, 32, (0.0,) * 3, (1.0,) * 3, seed=0, train=False,
                              keep_orig_masks=True)  # fmt: skip
    s = sds[0]
    pixels = (s["pixel_values"].permute(1, 2, 0).numpy() * 255.0).round()
    _assert_on_apples(pixels, list(s["masks"].numpy()))
    assert s["orig_masks"].shape[1:] == s["orig_size"]


# ---------------------------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "orientation", "masks_on"),
    [
        ("wide", 6, "raw"),
        ("wide", 6, "displayed"),
        ("wide", 8, "raw"),
        ("wide", 8, "displayed"),
        ("square", 6, "raw"),
        ("square", 8, "raw"),
    ],
)
def test_minneapple_exif_rotated_jpeg_masks_land_on_the_apples(
    tmp_path: Path, cache: Path, caplog, shape: str, orientation: int, masks_on: str
) -> None:
    size = SIZES[shape]
    image, label, _ = _scene(size)
    src = tmp_path / "src"
    _exif_jpeg(src / "train/images/a.jpg", image, orientation)
    mask = label if masks_on == "displayed" else _to_raw(label, orientation)
    (src / "train/masks").mkdir(parents=True)
    Image.fromarray(mask).save(src / "train/masks/a.png")

    with caplog.at_level(logging.WARNING, logger="sam_hf"):
        dd, report = _convert(src, cache)
    row = dd["train"][0]
    # stored upright: the displayed size, and datasets' decode (which applies EXIF) agrees
    assert (row["width"], row["height"]) == size
    stored = np.asarray(row["image"].convert("RGB"))
    masks = [rle.decode(o["segmentation"]) for o in row["objects"]]
    _assert_on_apples(stored, masks)
    _assert_training_view_on_apples(dd["train"])
    if shape == "square":  # stored and displayed sizes agree: ambiguous, warned and counted
        assert report.fixed["exif_orientation_ambiguous"] == 1
        assert "exif_orientation_ambiguous" in report.summary()
        assert "a.png" in caplog.text and "EXIF orientation" in caplog.text
    else:
        assert report.fixed["exif_orientation_applied"] == 1
        assert "exif_orientation_ambiguous" not in report.fixed


@pytest.mark.parametrize("masks_on", ["raw", "displayed"])
def test_coco_polygons_on_an_exif_rotated_jpeg_land_on_the_apples(
    tmp_path: Path, cache: Path, masks_on: str
) -> None:
    orientation, size = 6, SIZES["wide"]
    image, label, _ = _scene(size)
    images = tmp_path / "src/images"
    _exif_jpeg(images / "a.jpg", image, orientation)
    grid = _to_raw(label, orientation) if masks_on == "raw" else label
    h_m, w_m = grid.shape  # the size the annotations declare: the grid they were drawn on
    anns = []
    for i in (1, 2):  # each apple's box on that grid, as a polygon
        ys, xs = np.nonzero(grid == i)
        anns.append((ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": int(w_m), "height": int(h_m)}],
        "categories": [{"id": 1, "name": "apple"}],
        "annotations": [
            {
                "id": k,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]],
                "bbox": [x, y, bw, bh],
                "noun_phrase": "apple",
            }
            for k, (y, x, bh, bw) in enumerate([tuple(int(v) for v in a) for a in anns], start=1)
        ],
    }
    images, path = write_coco(tmp_path / "src", doc)
    report = Report()
    dd = convert_coco_text(images, path, cache_dir=cache, report=report)
    row = dd["train"][0]
    assert (row["width"], row["height"]) == size
    masks = [rle.decode(o["segmentation"]) for o in row["objects"]]
    _assert_on_apples(np.asarray(row["image"].convert("RGB")), masks)
    for obj, m in zip(row["objects"], masks):  # boxes turned with the masks
        assert obj["bbox"] == pytest.approx(list(rle.to_bbox([rle.encode(m)])[0]), abs=1.0)
    assert report.fixed["exif_orientation_applied"] == 1


@pytest.mark.parametrize("shape", ["wide", "square"])
def test_training_view_of_a_row_still_holding_exif_follows_its_masks(
    tmp_path: Path, shape: str
) -> None:
    """A row written before conversion fixed orientation (the JPEG's bytes with EXIF, masks on
    the stored grid): the dataset reads it by the same rule instead of letting ``datasets``
    turn the image away from its masks."""
    import datasets

    from sam_hf.data.schema import FEATURES, make_object

    size = SIZES[shape]
    image, label, _ = _scene(size)
    _exif_jpeg(tmp_path / "a.jpg", image, 6)
    raw_label = _to_raw(label, 6)
    objects = []
    for i in (1, 2):
        r = rle.encode(raw_label == i)
        objects.append(make_object(r, list(rle.to_bbox([r])[0]), float(rle.area([r])[0]), "apple"))
    row = {
        "image": {"bytes": (tmp_path / "a.jpg").read_bytes(), "path": None},
        "image_id": "a",
        "width": raw_label.shape[1],
        "height": raw_label.shape[0],
        "objects": objects,
        "negative_phrases": [],
    }
    ds = datasets.Dataset.from_list([row], features=FEATURES)
    _assert_training_view_on_apples(ds)


def test_orientation_helpers_match_pil_for_all_eight_orientations() -> None:
    raw = np.random.default_rng(0).integers(0, 256, (5, 7), dtype=np.uint8)
    m = np.zeros((5, 7), bool)
    m[1:3, 2:6] = True
    box = list(rle.to_bbox([rle.encode(m)])[0])
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        buf = io.BytesIO()
        Image.fromarray(raw).save(buf, format="PNG", exif=exif.tobytes())
        shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
        assert np.array_equal(orient_array(raw, o), shown), o
        image, info = load_image(buf.getvalue())
        assert np.array_equal(np.asarray(image)[..., 0], shown) and info.orientation == o
        turned = list(rle.to_bbox([rle.encode(orient_array(m, o))])[0])
        assert orient_bbox(box, o, (7, 5)) == pytest.approx(turned), o


# ---------------------------------------------------------------------------------------------
# High bit depth and alpha
# ---------------------------------------------------------------------------------------------


def _minneapple_with_image(src: Path, write_image) -> None:
    """One MinneApple image (written by ``write_image(path)``) with one 20x28 apple mask."""
    (src / "train/images").mkdir(parents=True)
    (src / "train/masks").mkdir(parents=True)
    write_image(src / "train/images/a.png")
    label = np.zeros((20, 28), np.uint8)
    label[5:15, 4:12] = 1
    Image.fromarray(label).save(src / "train/masks/a.png")


def test_16bit_greyscale_png_converts_and_trains_on_its_real_range(
    tmp_path: Path, cache: Path
) -> None:
    values = np.tile(np.linspace(1000, 3000, 28), (20, 1)).round().astype(np.uint16)

    def write(path: Path) -> None:
        Image.fromarray(values).save(path)
        assert Image.open(path).mode == "I;16"

    _minneapple_with_image(tmp_path / "src", write)
    dd, report = _convert(tmp_path / "src", cache)
    sds = SegmentationDataset(dd["train"], 32, (0.0,) * 3, (1.0,) * 3, seed=0, train=False)
    x = sds[0]["pixel_values"][0]
    assert x.max() - x.min() > 0.9  # the model does not train on a white (or black) image
    assert (torch.diff(x, dim=1) >= -1e-6).all()
    stored = np.asarray(dd["train"][0]["image"])
    assert stored.dtype == np.uint8 and stored.shape == (20, 28, 3)
    grey = stored[..., 0].astype(int)
    assert grey.min() == 0 and grey.max() == 255  # the image's own range, not saturated
    assert (np.diff(grey, axis=1) >= 0).all() and len(np.unique(grey)) == 28  # order kept
    assert report.fixed["high_bit_depth_scaled"] == 1


def test_16bit_rgb_png_uses_its_range_not_the_high_byte(tmp_path: Path, cache: Path) -> None:
    rgb = np.zeros((20, 28, 3), np.uint16)
    rgb[..., 0] = np.tile(np.linspace(1000, 3000, 28), (20, 1)).round().astype(np.uint16)
    rgb[..., 1] = 1000
    rgb[..., 2] = 2000

    def write(path: Path) -> None:  # OpenCV writes 16-bit colour PNGs (BGR order)
        assert cv2.imwrite(str(path), rgb[..., ::-1])

    _minneapple_with_image(tmp_path / "src", write)
    dd, _ = _convert(tmp_path / "src", cache)
    out = np.asarray(dd["train"][0]["image"]).astype(int)
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert (np.diff(out[..., 0], axis=1) >= 0).all()
    assert (out[..., 1] == 0).all() and (np.abs(out[..., 2] - 128) <= 1).all()  # one range


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_black_not_their_hidden_colour(
    tmp_path: Path, cache: Path, mode: str
) -> None:
    rgba = np.zeros((20, 28, 4), np.uint8)
    rgba[:, :14] = (*RED, 255)  # opaque apple-red left half
    rgba[:, 14:] = (255, 0, 255, 0)  # fully transparent right half hiding magenta

    def write(path: Path) -> None:
        im = Image.fromarray(rgba, "RGBA")
        if mode == "LA":
            im = im.convert("LA")
        elif mode == "P":  # palette with a transparent index
            pal = Image.new("P", (20, 28))
            pal.putpalette([*RED, 255, 0, 255] + [0] * 762)
            idx = np.where(rgba[..., 3] > 0, 0, 1).astype(np.uint8)
            im = Image.fromarray(idx, "P")
            im.putpalette([*RED, 255, 0, 255] + [0] * 762)
            im.info["transparency"] = 1
        im.save(path)
        assert Image.open(path).mode == mode

    _minneapple_with_image(tmp_path / "src", write)
    dd, report = _convert(tmp_path / "src", cache)
    sds = SegmentationDataset(dd["train"], 28, (0.0,) * 3, (1.0,) * 3, seed=0, train=False)
    x = (sds[0]["pixel_values"].permute(1, 2, 0).numpy() * 255).round()
    assert (x[:, 16:] == 0).all(), "transparent pixels must not show their hidden colour"
    assert x[:, :12].max() > 0
    assert report.fixed["alpha_flattened"] == 1


# ---------------------------------------------------------------------------------------------
# scripts/predict.py
# ---------------------------------------------------------------------------------------------

predict_cli = load_script("predict")


def _predict_folder(root: Path) -> tuple[Path, Path]:
    """Images a.png, b.jpg (EXIF orientation 6, 40x24 displayed) and a truncated c.png, and a
    SAM2 prompts file for all three."""
    images = root / "images"
    images.mkdir(parents=True)
    Image.fromarray(_scene((24, 24))[0]).save(images / "a.png")
    _exif_jpeg(images / "b.jpg", _scene(SIZES["wide"])[0], 6)
    buf = io.BytesIO()
    Image.fromarray(_scene((24, 24))[0]).save(buf, format="PNG")
    (images / "c.png").write_bytes(buf.getvalue()[:90])  # truncated
    prompts = root / "prompts.json"
    prompts.write_text(
        json.dumps({n: [{"box": [2, 2, 12, 9]}] for n in ("a.png", "b.jpg", "c.png")})
    )
    return images, prompts


def test_predict_skips_a_truncated_image_names_it_and_predicts_the_rest(
    tmp_path: Path, capsys, caplog
) -> None:
    images, prompts = _predict_folder(tmp_path)
    args = ["--model", "sam2-tiny", "--resolution", "64", "--images", str(images),
            "--prompts", str(prompts), "--no-progress"]  # fmt: skip
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="sam_hf"):
        rc = predict_cli.main([*args, "--out", str(out)])
    text = capsys.readouterr().out + caplog.text
    assert rc == 0
    meta = json.loads((out / "images.json").read_text())["images"]
    assert sorted(m["file_name"] for m in meta) == ["a.png", "b.jpg"]
    b = next(m for m in meta if m["file_name"] == "b.jpg")
    assert (b["width"], b["height"]) == SIZES["wide"]  # the image as displayed (EXIF applied)
    assert len(json.loads((out / "predictions.json").read_text())) == 2
    assert "c.png" in caplog.text and "1 unreadable image(s) skipped" in text

    # --strict: exit 2 at the bad image, naming it, and no --out left behind
    strict_out = tmp_path / "strict"
    assert predict_cli.main([*args, "--out", str(strict_out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "c.png" in err and "--strict" in err
    assert not strict_out.exists()

    # nothing readable: exit 2, every bad image named, no empty --out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "c.png").write_bytes((images / "c.png").read_bytes())
    none_out = tmp_path / "none" / "out"
    assert predict_cli.main([*args[:4], "--images", str(bad), "--prompts", str(prompts),
                             "--no-progress", "--out", str(none_out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no image could be read" in err and "c.png" in err
    assert not none_out.exists() and not none_out.parent.exists()


def test_predict_family_hint_names_only_flags_predict_has(tmp_path: Path, capsys) -> None:
    images, prompts = _predict_folder(tmp_path)
    rc = predict_cli.main(["--model", "sam3-tiny", "--images", str(images), "--prompts",
                           str(prompts), "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "holds a SAM3 model" in err
    known = {s for a in predict_cli.build_parser()._actions for s in a.option_strings}
    named = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", err))
    assert named and named <= known, f"the hint names flags predict.py lacks: {named - known}"
    assert not (tmp_path / "o").exists()
