"""The `evaluate` metric modules load offline from their folders and equal sam_hf.metrics.masks."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_hf.metrics.masks import boundary_f1, dice, mask_iou

MODULES = Path(__file__).resolve().parents[1] / "sam_hf" / "metrics" / "modules"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch):
    """Hub switched off by its environment variables and, to be sure, no sockets at all."""
    import datasets
    import evaluate

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(var, "1")
    # the libraries read those variables at import time; set the parsed flags as well
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return evaluate


def masks(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Instances of mixed sizes and dtypes, including the empty and one-sided cases."""
    rng = np.random.default_rng(seed)
    preds, refs = [], []
    for h, w in [(12, 17), (12, 17), (9, 9), (20, 6), (9, 9)]:
        yy, xx = np.ogrid[:h, :w]
        gt = (yy - rng.integers(0, h)) ** 2 + (xx - rng.integers(0, w)) ** 2 <= 16
        preds.append(np.roll(gt, 1, axis=1).astype(np.uint8) * 255)  # a 0/255 PNG-style mask
        refs.append(gt)
    preds[2][:] = 0  # empty prediction
    refs[4][:] = False
    preds[4][:] = 0  # both empty
    return preds, refs


def torch_mean(fn, preds, refs, **kwargs) -> tuple[float, list[float]]:
    values = [
        fn(torch.from_numpy(p[None] != 0), torch.from_numpy(r[None]), **kwargs).item()
        for p, r in zip(preds, refs)
    ]
    return float(np.mean(values)), values


@pytest.mark.parametrize(
    ("name", "fn", "key", "kwargs"),
    [
        ("mask_iou", mask_iou, "mean_iou", {}),
        ("dice", dice, "mean_dice", {}),
        ("boundary_f1", boundary_f1, "mean_boundary_f1", {}),
        ("boundary_f1", boundary_f1, "mean_boundary_f1", {"bound_th": 2.5}),
    ],
)
def test_module_loads_offline_and_equals_torch(offline, tmp_path, name, fn, key, kwargs) -> None:
    metric = offline.load(str(MODULES / name), cache_dir=str(tmp_path))
    preds, refs = masks(seed=len(name))
    out = metric.compute(predictions=preds, references=refs, return_per_example=True, **kwargs)
    mean, values = torch_mean(fn, preds, refs, **kwargs)
    # the same per-example values; the module's float64 mean sums them in another order
    # (a few x 1.1e-16): abs 1e-12 is a > 1000x margin
    assert out[key] == pytest.approx(mean, abs=1e-12)
    assert out[f"per_example_{key.removeprefix('mean_')}"] == pytest.approx(values, abs=1e-12)


def test_module_accumulates_batches(offline, tmp_path) -> None:
    metric = offline.load(str(MODULES / "mask_iou"), keep_in_memory=True)
    preds, refs = masks(seed=3)
    metric.add(prediction=preds[0], reference=refs[0])
    metric.add_batch(predictions=preds[1:], references=refs[1:])
    assert metric.compute()["mean_iou"] == pytest.approx(torch_mean(mask_iou, preds, refs)[0])


def test_module_rejects_mismatched_sizes(offline) -> None:
    metric = offline.load(str(MODULES / "dice"), keep_in_memory=True)
    with pytest.raises(ValueError, match="equal 2-D masks"):
        metric.compute(predictions=[np.zeros((4, 4))], references=[np.zeros((4, 5))])
