"""MinneApple converter, the shared converter machinery (cache, skips, atomic save) and its CLI."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import datasets
import numpy as np
import pytest
from PIL import Image

from sam_hf.data import build, rle
from sam_hf.data.build import seeded_split
from sam_hf.data.checks import image_format_suffix, image_value
from sam_hf.data.report import ConversionError, Report
from sam_hf.data.schema import FEATURES
from sam_hf.data.sources import minneapple
from sam_hf.data.sources.minneapple import convert_minneapple, prepare_minneapple

REPO = Path(__file__).resolve().parents[1]
H, W = 20, 28


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _label_map(seed: int, ids: list[int], dtype=np.uint8) -> np.ndarray:
    """Disjoint rectangles with the given ids (one may touch the border), rest background."""
    rng = np.random.default_rng(seed)
    m = np.zeros((H, W), dtype=dtype)
    for k, i in enumerate(ids):
        y0 = (k * 5) % (H - 4)
        x0 = int(rng.integers(0, W - 6))
        m[y0 : y0 + 4, x0 : x0 + int(rng.integers(2, 6))] = i
    return m


def write_split(
    root: Path,
    split: str,
    n: int,
    *,
    masks: bool = True,
    ids: list[int] | None = None,
    dtype=np.uint8,
    offset: int = 0,
) -> dict[str, np.ndarray]:
    """A MinneApple split folder with ``n`` images (and masks); returns stem -> label map."""
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        stem = f"{split}_{i + offset:03d}"
        Image.fromarray(_rgb(i + offset)).save(root / split / "images" / f"{stem}.png")
        if masks:
            label = _label_map(i + offset, ids or [1, 2, 5], dtype)
            Image.fromarray(label).save(root / split / "masks" / f"{stem}.png")
            out[stem] = label
    return out


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _assert_exact(ds: datasets.Dataset, labels: dict[str, np.ndarray]) -> None:
    for row in ds:
        label = labels[row["image_id"]]
        ids = [int(i) for i in np.unique(label) if i != 0]
        assert len(row["objects"]) == len(ids)
        for i, obj in zip(ids, row["objects"]):
            decoded = rle.decode(obj["segmentation"])
            assert np.array_equal(decoded, label == i)
            assert obj["area"] == (label == i).sum()
            ys, xs = np.nonzero(label == i)
            assert obj["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            assert obj["category"] == "apple" and obj["noun_phrase"] == "apple"
            assert obj["iscrowd"] is False


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


def test_minneapple_8bit_masks_decode_exactly(tmp_path: Path, cache: Path) -> None:
    labels = write_split(tmp_path / "src", "train", 4, ids=[1, 2, 7])
    labels.update(write_split(tmp_path / "src", "test", 2, ids=[3, 4]))
    dd = convert_minneapple(tmp_path / "src", val_fraction=0.0, cache_dir=cache)
    assert set(dd) == {"train", "test"}
    for split in dd.values():
        assert split.features == FEATURES
        _assert_exact(split, labels)
    row = dd["train"][0]
    assert (row["image_id"], row["width"], row["height"]) == ("train_000", W, H)
    # image bytes are stored, not paths: the row is self-contained and bit-identical
    raw = dd["train"].cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw["path"] is None
    assert raw["bytes"] == (tmp_path / "src/train/images/train_000.png").read_bytes()


def test_minneapple_16bit_masks_with_large_ids(tmp_path: Path, cache: Path) -> None:
    labels = write_split(tmp_path / "src", "train", 2, ids=[1, 300, 65535], dtype=np.uint16)
    assert Image.open(tmp_path / "src/train/masks/train_000.png").mode == "I;16"
    dd = convert_minneapple(tmp_path / "src", val_fraction=0.0, cache_dir=cache)
    _assert_exact(dd["train"], labels)
    assert len(dd["train"][0]["objects"]) == 3


def test_archive_nesting_and_images_only_split(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "src"
    labels = write_split(root / "detection", "train", 10)
    write_split(root / "detection", "test", 3, masks=False)
    dd = convert_minneapple(root, val_fraction=0.2, seed=1, cache_dir=cache)
    assert list(dd) == ["train", "validation", "test"]
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (8, 2, 3)
    assert all(row["objects"] == [] for row in dd["test"])
    _assert_exact(dd["validation"], labels)


def test_test_masks_from_test_data_folder(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "src"
    write_split(root / "detection", "train", 2)
    write_split(root / "detection", "test", 2, masks=False)
    labels = write_split(root / "test_data", "segmentation", 2)
    dd = convert_minneapple(root, val_fraction=0.0, cache_dir=cache)
    _assert_exact(dd["test"], labels)


def test_validation_split_is_seeded_and_disjoint(tmp_path: Path, cache: Path) -> None:
    write_split(tmp_path / "src", "train", 20)
    a = convert_minneapple(tmp_path / "src", val_fraction=0.25, seed=3, cache_dir=cache)
    b = convert_minneapple(
        tmp_path / "src", val_fraction=0.25, seed=3, cache_dir=tmp_path / "other_cache"
    )
    c = convert_minneapple(tmp_path / "src", val_fraction=0.25, seed=4, cache_dir=cache)
    val_a, train_a = set(a["validation"]["image_id"]), set(a["train"]["image_id"])
    assert len(val_a) == 5 and len(train_a) == 15 and not val_a & train_a
    assert val_a == set(b["validation"]["image_id"])  # same seed, fresh cache: same split
    assert val_a != set(c["validation"]["image_id"])
    # independent of listing order
    names = [f"x{i}" for i in range(10)]
    assert seeded_split(names, 0.3, 0) == seeded_split(list(reversed(names)), 0.3, 0)


def test_second_run_loads_from_cache_without_generating(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_split(tmp_path / "src", "train", 3)
    calls = []
    real = build.run_generator

    def spy(*args, **kwargs):
        calls.append(1)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(build, "run_generator", spy)
    r1, r2 = Report(), Report()
    first = convert_minneapple(tmp_path / "src", val_fraction=0.0, cache_dir=cache, report=r1)
    assert len(calls) == 1 and not r1.from_cache
    second = convert_minneapple(tmp_path / "src", val_fraction=0.0, cache_dir=cache, report=r2)
    assert len(calls) == 1, "identical inputs must not run the generator again"
    assert r2.from_cache and "loaded from Arrow cache" in r2.summary()
    assert second["train"].cache_files == first["train"].cache_files
    assert (r2.images, r2.objects) == (r1.images, r1.objects) == (3, 9)
    # a touched input file (new mtime) is a new fingerprint: converted again
    mask = tmp_path / "src/train/masks/train_001.png"
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    convert_minneapple(tmp_path / "src", val_fraction=0.0, cache_dir=cache)
    assert len(calls) == 2
    # and so is a changed option
    convert_minneapple(tmp_path / "src", val_fraction=0.0, on_error="skip", cache_dir=cache)
    assert len(calls) == 3


def test_cache_hit_reports_the_same_skips(tmp_path: Path, cache: Path) -> None:
    write_split(tmp_path / "src", "train", 3)
    (tmp_path / "src/train/images/train_001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r1, r2 = Report(), Report()
    convert_minneapple(
        tmp_path / "src", val_fraction=0.0, on_error="skip", cache_dir=cache, report=r1
    )
    convert_minneapple(
        tmp_path / "src", val_fraction=0.0, on_error="skip", cache_dir=cache, report=r2
    )
    assert r2.from_cache
    assert r1.skipped == r2.skipped == {"corrupt_image": 1}
    assert r2.images == 2
    assert "train_001.png" in r2.summary()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _convert(
    root: Path, cache: Path, on_error: str = "raise"
) -> tuple[datasets.DatasetDict, Report]:
    report = Report()
    dd = convert_minneapple(
        root, val_fraction=0.0, on_error=on_error, cache_dir=cache, report=report
    )
    return dd, report


def test_corrupt_image(tmp_path: Path, cache: Path) -> None:
    write_split(tmp_path / "src", "train", 3)
    bad = tmp_path / "src/train/images/train_002.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    with pytest.raises(ConversionError) as e:
        _convert(tmp_path / "src", cache)
    assert str(bad) in str(e.value) and "image train_002" in str(e.value)
    assert e.value.reason == "corrupt_image"
    dd, report = _convert(tmp_path / "src", cache, "skip")
    assert len(dd["train"]) == 2 and report.skipped == {"corrupt_image": 1}


def test_mask_without_image_and_image_without_mask(tmp_path: Path, cache: Path) -> None:
    write_split(tmp_path / "src", "train", 3)
    (tmp_path / "src/train/images/train_000.png").unlink()  # the mask's image is missing
    (tmp_path / "src/train/masks/train_001.png").unlink()  # the image's mask is missing
    with pytest.raises(
        ConversionError, match="train_001.png: image train_001: no mask .*train_001.png"
    ):
        _convert(tmp_path / "src", cache)
    (tmp_path / "src/train/images/train_001.png").unlink()
    with pytest.raises(
        ConversionError, match="train_000.png: image id train_000: mask has no image"
    ):
        _convert(tmp_path / "src", cache)
    write_split(tmp_path / "src2", "train", 3)
    (tmp_path / "src2/train/images/train_000.png").unlink()
    (tmp_path / "src2/train/masks/train_001.png").unlink()
    dd, report = _convert(tmp_path / "src2", cache, "skip")
    assert dd["train"]["image_id"] == ["train_002"]
    assert report.skipped == {"unknown_image_id": 1, "missing_mask": 1}


def test_mask_size_differs_from_image(tmp_path: Path, cache: Path) -> None:
    write_split(tmp_path / "src", "train", 2)
    mask = tmp_path / "src/train/masks/train_001.png"
    Image.fromarray(np.ones((H + 1, W), np.uint8)).save(mask)
    with pytest.raises(ConversionError) as e:
        _convert(tmp_path / "src", cache)
    assert str(mask) in str(e.value) and "image train_001" in str(e.value)
    assert f"mask is {W}x{H + 1}" in str(e.value) and e.value.reason == "mask_size_mismatch"
    _, report = _convert(tmp_path / "src", cache, "skip")
    assert report.skipped == {"mask_size_mismatch": 1}


@pytest.mark.parametrize("mode", ["RGB", "LA", "1"])
def test_mask_not_single_channel_8_or_16_bit(tmp_path: Path, cache: Path, mode: str) -> None:
    write_split(tmp_path / "src", "train", 2)
    mask = tmp_path / "src/train/masks/train_000.png"
    Image.new(mode, (W, H)).save(mask)
    with pytest.raises(ConversionError, match=f"got PIL mode '{mode}'") as e:
        _convert(tmp_path / "src", cache)
    assert str(mask) in str(e.value) and e.value.reason == "bad_mask_format"
    _, report = _convert(tmp_path / "src", cache, "skip")
    assert report.skipped == {"bad_mask_format": 1}


def test_duplicate_image_ids(tmp_path: Path, cache: Path) -> None:
    write_split(tmp_path / "src", "train", 2)
    Image.fromarray(_rgb(9)).save(tmp_path / "src/train/images/train_000.jpg")
    with pytest.raises(ConversionError, match="duplicate image id 'train_000'") as e:
        _convert(tmp_path / "src", cache)
    assert "train_000.png" in str(e.value)
    dd, report = _convert(tmp_path / "src", cache, "skip")
    assert sorted(dd["train"]["image_id"]) == ["train_000", "train_001"]
    assert report.skipped == {"duplicate_image_id": 1}


def test_empty_dataset(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "src/train/images").mkdir(parents=True)
    with pytest.raises(ConversionError, match="empty dataset") as e:
        _convert(tmp_path / "src", cache, "skip")
    assert str(tmp_path / "src") in str(e.value)
    with pytest.raises(ConversionError, match="nothing_here: source folder not found"):
        _convert(tmp_path / "nothing_here", cache)
    (tmp_path / "other").mkdir()
    with pytest.raises(ConversionError, match="no MinneApple split found"):
        _convert(tmp_path / "other", cache)
    (tmp_path / "flat/images").mkdir(parents=True)
    with pytest.raises(ConversionError, match="move it to <root>/train/"):
        _convert(tmp_path / "flat", cache)


def test_everything_skipped_is_an_empty_dataset(tmp_path: Path, cache: Path) -> None:
    write_split(tmp_path / "src", "train", 2)
    for p in (tmp_path / "src/train/images").iterdir():
        p.write_bytes(b"not an image")
    with pytest.raises(ConversionError, match="every record was skipped"):
        _convert(tmp_path / "src", cache, "skip")


# ---------------------------------------------------------------------------------------------
# Saving and the CLI
# ---------------------------------------------------------------------------------------------


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_prepare_saves_dataset_and_card(tmp_path: Path, cache: Path) -> None:
    labels = write_split(tmp_path / "src", "train", 5)
    out = tmp_path / "out"
    report, path = prepare_minneapple(tmp_path / "src", out, val_fraction=0.2, cache_dir=cache)
    assert path == out.absolute()
    dd = datasets.load_from_disk(str(out))
    assert set(dd) == {"train", "validation"} and dd["train"].features == FEATURES
    _assert_exact(dd["train"], labels)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "license: cc-by-nc-sa-3.0" in card
    assert "| train | 4 | 12 |" in card and "| validation | 1 | 3 |" in card
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode
    # a second prepare replaces the saved dataset in place, leaving nothing beside it
    prepare_minneapple(tmp_path / "src", out, val_fraction=0.2, cache_dir=cache)
    assert _leftovers(tmp_path) == []


def test_failed_save_leaves_nothing(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_split(tmp_path / "src", "train", 2)
    out = tmp_path / "out"

    def broken_save(self, path, **kwargs):
        Path(path, "partial.arrow").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", broken_save)
    with pytest.raises(OSError, match="disk full"):
        prepare_minneapple(tmp_path / "src", out, val_fraction=0.0, cache_dir=cache)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path: Path, cache: Path) -> None:
    write_split(tmp_path / "src", "train", 2)
    out = tmp_path / "important"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(ConversionError, match="refusing to replace it"):
        prepare_minneapple(tmp_path / "src", out, val_fraction=0.0, cache_dir=cache)
    assert (out / "thesis.tex").read_text() == "do not delete"


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def test_cli_prepare_mineapple_twice_then_bad_input(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_split(tmp_path / "src", "train", 4)
    write_split(tmp_path / "src", "test", 2, masks=False)
    out = tmp_path / "out"
    cmd = ["scripts/prepare_mineapple.py", "--source", str(tmp_path / "src"), "--out", str(out)]
    cmd += ["--val-fraction", "0.25", "--cache-dir", str(cache)]
    # two separate processes: the second finds the first one's Arrow cache
    first = _run_script(*cmd)
    assert first.returncode == 0, first.stderr
    assert "train: 3 images, 9 objects (converted)" in first.stdout
    assert "skipped by reason: none" in first.stdout
    second = _run_script(*cmd)
    assert second.returncode == 0, second.stderr
    assert "train: 3 images, 9 objects (loaded from Arrow cache)" in second.stdout
    assert set(datasets.load_from_disk(str(out))) == {"train", "validation", "test"}

    # bad input: exit 2, the message names file and record, nothing is written
    script = _load_script("prepare_mineapple")
    Image.new("RGB", (W, H)).save(tmp_path / "src/train/masks/train_001.png")
    bad_out = tmp_path / "bad_out"
    args = ["--source", str(tmp_path / "src"), "--out", str(bad_out), "--cache-dir", str(cache)]
    assert script.main(args) == 2
    assert (
        "train_001.png: image train_001: mask must be a single-channel" in capsys.readouterr().err
    )
    assert not bad_out.exists() and _leftovers(tmp_path) == []
    assert script.main([*args, "--on-error", "skip"]) == 0
    assert "bad_mask_format: 1" in capsys.readouterr().out


def test_real_minneapple_frames_if_present(tmp_path: Path, cache: Path) -> None:
    """Optional check on the two real frames of ../shared (skipped on a fresh clone)."""
    real = REPO.parent / "shared" / "data" / "minneapple_real"
    if not real.is_dir():
        pytest.skip("no real MinneApple frames on this machine")
    (tmp_path / "src/test").mkdir(parents=True)
    for sub in ("images", "masks"):
        (tmp_path / "src/test" / sub).symlink_to(real / sub)
    dd = convert_minneapple(tmp_path / "src", cache_dir=cache)
    labels = {p.stem: np.array(Image.open(p)) for p in (real / "masks").glob("*.png")}
    _assert_exact(dd["test"], labels)
    assert {(r["width"], r["height"]) for r in dd["test"]} == {(720, 1280)}


def test_report_round_trips_through_json() -> None:
    r = Report(source="x")
    r.skip(ConversionError("bad", file="a.png", record="image a", reason="corrupt_image"))
    r.fix("clipped_coordinates", "a.json: annotation id 3")
    back = Report.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.skipped == r.skipped and back.fixed == r.fixed and back.examples == r.examples
    assert "corrupt_image: 1" in back.summary() and "a.png: image a: bad" in back.summary()


def test_conversion_error_pickles() -> None:
    import pickle

    e = ConversionError("msg", file="f.json", record="annotation id 1", reason="unknown_image_id")
    back = pickle.loads(pickle.dumps(e))
    assert str(back) == "f.json: annotation id 1: msg" and back.reason == "unknown_image_id"


def test_image_value_is_bytes_only() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2)).save(buf, format="PNG")
    assert image_value(buf.getvalue()) == {"bytes": buf.getvalue(), "path": None}
    assert image_format_suffix(buf.getvalue()) == ".png"


def test_encode_instances_equals_pycocotools_encode() -> None:
    """The bbox-local RLE builder gives the very strings pycocotools' encode gives."""
    rng = np.random.default_rng(0)
    maps = [np.full((3, 4), 9, np.uint8), np.eye(5, dtype=np.uint16) * 65535]
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 25, 2))
        maps.append((rng.integers(0, 4, (h, w)) * int(rng.integers(1, 4000))).astype(np.uint16))
    for label in maps:
        ids = [int(i) for i in np.unique(label) if i != 0]
        assert rle.encode_instances(label) == [rle.encode(label == i) for i in ids]
        asked = [7, *ids[:1], 0]  # in the order asked; absent ids give empty masks
        assert rle.encode_instances(label, asked) == [rle.encode(label == i) for i in asked]


def test_unforeseen_failure_names_the_record_and_keeps_its_cause(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_split(tmp_path / "src", "train", 2)

    def boom(label_map):
        raise RuntimeError("bug in a helper")

    monkeypatch.setattr(minneapple, "masks_to_objects", boom)
    with pytest.raises(
        ConversionError, match="train_000.png: image train_000: unexpected RuntimeError"
    ) as e:
        _convert(tmp_path / "src", cache)
    assert isinstance(e.value.__cause__, RuntimeError)
