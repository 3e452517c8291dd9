"""Mask overlays: exact pixel colours, the side-by-side panel, and logging to real trackers."""

from __future__ import annotations

import glob
import io
import logging
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sam_hf.data import overlays as viz

GRAY = 100


def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A gray 32x48 image, two predicted squares and two (different) ground-truth squares."""
    img = np.full((32, 48, 3), GRAY, np.uint8)
    pred = np.zeros((2, 32, 48), bool)
    pred[0, 2:10, 2:10] = True
    pred[1, 12:20, 20:30] = True
    gt = np.zeros((2, 32, 48), bool)
    gt[0, 3:11, 2:10] = True
    gt[1, 12:22, 20:32] = True
    return img, pred, gt


def test_instance_colors_distinct_and_deterministic():
    a, b = viz.instance_colors(30), viz.instance_colors(30)
    assert a.dtype == np.uint8 and a.shape == (30, 3)
    np.testing.assert_array_equal(a, b)
    assert len({tuple(c) for c in a}) == 30
    np.testing.assert_array_equal(viz.instance_colors(5), a[:5])  # index k keeps its colour


def test_overlay_blends_inside_and_outlines_the_boundary():
    img, pred, _ = scene()
    colors = viz.instance_colors(2).astype(float)
    out = viz.overlay_masks(img, pred, alpha=0.5, outline=False)
    assert out.dtype == np.uint8 and out.shape == img.shape
    want0 = np.rint(0.5 * GRAY + 0.5 * colors[0])
    want1 = np.rint(0.5 * GRAY + 0.5 * colors[1])
    assert (out[pred[0]] == want0).all() and (out[pred[1]] == want1).all()
    assert (out[~pred.any(0)] == GRAY).all()  # untouched outside every mask

    out = viz.overlay_masks(img, pred, alpha=0.5, outline=True)
    assert (out[2, 2:10] == colors[0]).all() and (out[9, 2:10] == colors[0]).all()  # top/bottom
    assert (out[2:10, 2] == colors[0]).all() and (out[2:10, 9] == colors[0]).all()  # sides
    assert (out[3:9, 3:9] == want0).all()  # interior only blended
    assert (out[~pred.any(0)] == GRAY).all()


def test_overlay_single_colour_and_errors():
    img, pred, _ = scene()
    out = viz.overlay_masks(img, pred, color=(255, 0, 0), alpha=1.0, outline=False)
    assert (out[pred.any(0)] == [255, 0, 0]).all()
    with pytest.raises(ValueError, match="masks are 16x16 but the image is 32x48"):
        viz.overlay_masks(img, np.zeros((1, 16, 16), bool))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        viz.overlay_masks(img.astype(np.float32), pred)


def test_label_map_and_side_by_side_panels():
    img, pred, gt = scene()
    lm = viz.label_map(pred)
    assert lm.dtype == np.uint8
    assert set(np.unique(lm)) == {0, 1, 2}
    assert (lm[pred[1]] == 2).all() and (lm[~pred.any(0)] == 0).all()

    panel = viz.side_by_side(img, pred, gt, title="img 7")
    h, w = img.shape[:2]
    assert panel.shape == (viz.HEADER_HEIGHT + h, 2 * w + viz.PANEL_GAP, 3)
    np.testing.assert_array_equal(panel[viz.HEADER_HEIGHT :, :w], viz.overlay_masks(img, pred))
    np.testing.assert_array_equal(
        panel[viz.HEADER_HEIGHT :, w + viz.PANEL_GAP :], viz.overlay_masks(img, gt)
    )
    assert (panel[: viz.HEADER_HEIGHT] < 255).any()  # the labels were drawn


def test_to_uint8_image_undoes_normalisation():
    img, _, _ = scene()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = (img.astype(np.float32) / 255.0 - mean) / std
    back = viz.to_uint8_image(x.transpose(2, 0, 1), mean, std)
    np.testing.assert_array_equal(back, img)
    assert viz.to_uint8_image(x.transpose(2, 0, 1), mean, std, size=(64, 96)).shape == (64, 96, 3)


def read_wandb_history(run_file: str) -> list[dict[str, str]]:
    """History rows of an offline ``run-*.wandb`` file (a leveldb-style record log)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    block, pos, records, partial = 32768, 7, [], b""  # 7-byte ":W&B" file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a record header
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind in (2, 3):
            partial = (partial if kind == 3 else b"") + chunk
        elif kind == 4:
            records.append(partial + chunk)
    rows = []
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item})
    return rows


def test_offline_wandb_and_tensorboard_runs_hold_metrics_and_images(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    from accelerate import Accelerator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    img, pred, gt = scene()
    acc = Accelerator(cpu=True, log_with=["wandb", "tensorboard"], project_dir=str(tmp_path))
    acc.init_trackers(
        "sam_hf_test", config={"lr": 1e-4}, init_kwargs={"wandb": {"dir": str(tmp_path)}}
    )
    items = [{"image": img, "pred_masks": pred, "gt_masks": gt, "image_id": "img_0"}]
    assert viz.log_overlays(acc, items, step=3) == {"wandb": 1, "tensorboard": 1}
    acc.log({"eval/mean_iou": 0.625}, step=3)
    acc.end_training()  # closes the tensorboard writer (a synchronous flush) and finishes wandb
    # wandb's run.finish() only *tells* its service process that the run is done
    # (inform_finish is fire-and-forget); the service writes and closes run-*.wandb on its own
    # time, so under load the file can still lack the history rows (flaky `assert rows`).
    # wandb.teardown() waits for the service process to exit, i.e. for every file to be closed.
    wandb.teardown()

    (run_dir,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    (run_file,) = glob.glob(f"{run_dir}/run-*.wandb")
    rows = [r for r in read_wandb_history(run_file) if r.get("_step") == "3"]
    assert rows and float(rows[-1]["eval/mean_iou"]) == 0.625
    row = rows[-1]
    assert row["eval/overlays/_type"] == '"images/separated"'
    assert '"prediction"' in row["eval/overlays/all_masks"]
    assert '"ground_truth"' in row["eval/overlays/all_masks"]
    media = Path(run_dir) / "files" / "media" / "images"
    (png,) = media.glob("eval/overlays_*.png")
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), img)
    masks = sorted(media.glob("mask/eval/overlays_*.mask.png"))
    assert len(masks) == 2  # prediction and ground-truth layers
    layers = {tuple(np.unique(np.asarray(Image.open(m)))) for m in masks}
    assert layers == {(0, 1, 2)}
    decoded = sorted(np.asarray(Image.open(m)).tobytes() for m in masks)
    assert decoded == sorted([viz.label_map(pred).tobytes(), viz.label_map(gt).tobytes()])

    (event_file,) = glob.glob(str(tmp_path / "sam_hf_test" / "events.out.tfevents.*"))
    ea = EventAccumulator(event_file, size_guidance={"images": 0})
    ea.Reload()
    assert "eval/overlays/0" in ea.Tags()["images"]
    (event,) = ea.Images("eval/overlays/0")
    assert event.step == 3
    got = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(got, viz.side_by_side(img, pred, gt, "img_0"))


def test_trackio_stub_and_failing_tracker_do_not_stop_a_run(monkeypatch, caplog):
    img, pred, gt = scene()
    logged: dict = {}

    class FakeImage:
        def __init__(self, value, caption=None):
            self.value, self.caption = value, caption

    monkeypatch.setitem(sys.modules, "trackio", SimpleNamespace(Image=FakeImage))

    class Tracker:
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def log(self, values, step=None):
            if self.fail:
                raise RuntimeError("dashboard unreachable")
            logged.update(values)
            logged["step"] = step

    acc = SimpleNamespace(trackers=[Tracker("trackio"), Tracker("wandb", fail=True)])
    items = [{"image": img, "pred_masks": pred, "gt_masks": gt, "caption": "c"}]
    with caplog.at_level(logging.WARNING, logger="sam_hf"):
        counts = viz.log_overlays(acc, items, step=5)
    assert counts == {"trackio": 1}
    assert logged["step"] == 5 and logged["eval/overlays/0"].caption == "c"
    np.testing.assert_array_equal(
        logged["eval/overlays/0"].value, viz.side_by_side(img, pred, gt, "c")
    )
    assert "Could not log overlay images to wandb: dashboard unreachable" in caplog.text
    assert viz.log_overlays(SimpleNamespace(trackers=[]), items, step=1) == {}
