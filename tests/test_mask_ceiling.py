"""scripts/mask_ceiling.py: the best IoU reachable through SAM2's low-resolution mask grid."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from scripts_loader import load_script

from sam_hf.data import rle
from sam_hf.data.schema import FEATURES, make_object
from sam_hf.data.synthetic.drawing import encode_png

mask_ceiling = load_script("mask_ceiling")


def _rows() -> datasets.Dataset:
    """One 64x64 image: a 30x30 square (many grid cells) and a 2x2 speck (under one cell)."""
    label = np.zeros((64, 64), np.uint16)
    label[10:40, 12:42] = 1
    label[52:54, 52:54] = 2
    rles = rle.encode_instances(label, [1, 2])
    boxes, areas = rle.to_bbox(rles), rle.area(rles)
    objects = [
        make_object(r, boxes[k].tolist(), float(areas[k]), "thing") for k, r in enumerate(rles)
    ]
    image = {"bytes": encode_png(np.zeros((64, 64, 3), np.uint8)), "path": None}
    row = {"image": image, "image_id": "a", "width": 64, "height": 64, "objects": objects}
    return datasets.Dataset.from_list([{**row, "negative_phrases": []}], features=FEATURES)


def test_big_objects_are_reachable_and_specks_are_not() -> None:
    c = mask_ceiling.ceilings(_rows(), resolution=64, steps=150)  # a 16x16 grid: 4 px a cell
    assert c["area"].tolist() == [900.0, 4.0]
    big, speck = c["fitted_iou"]
    assert big > 0.95  # a large square is drawn almost exactly on the grid
    assert speck < big  # a speck smaller than one cell is not
    assert np.all(c["fitted_iou"] >= c["area_iou"] - 1e-6)  # fitting never loses to averaging


def test_cli_prints_the_table_per_size_bin(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    datasets.DatasetDict({"validation": _rows()}).save_to_disk(str(tmp_path / "d"))
    assert (
        mask_ceiling.main(["--data", str(tmp_path / "d"), "--resolution", "64", "--steps", "20"])
        == 0
    )
    out = capsys.readouterr().out
    assert "mask grid 16x16" in out and "2 objects" in out
    assert "[0, 50) | 1 |" in out and "[400, inf) | 1 |" in out and "all | 2 |" in out


def test_records_add_the_model_column_and_must_cover_every_object(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    datasets.DatasetDict({"validation": _rows()}).save_to_disk(str(tmp_path / "d"))
    rec = {"records": {"point": [{"image_id": "a", "iou": [0.9, 0.1]}]}}
    (tmp_path / "r.json").write_text(json.dumps(rec))
    args = ["--data", str(tmp_path / "d"), "--resolution", "64", "--steps", "5"]
    assert mask_ceiling.main([*args, "--records", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "| model" in out and "[0, 50) | 1 |" in out
    assert out.splitlines()[-1].endswith("| 0.500")  # all: mean of 0.9 and 0.1
    assert "| 0.100" in out and "| 0.900" in out  # the speck and the square, in their bins
    rec["records"]["point"][0]["iou"] = [0.9]  # one object short
    (tmp_path / "r.json").write_text(json.dumps(rec))
    with pytest.raises(SystemExit, match="object for object"):
        mask_ceiling.main([*args, "--records", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit, match="no 'box' records"):
        mask_ceiling.main([*args, "--records", str(tmp_path / "r.json"), "--prompt", "box"])
