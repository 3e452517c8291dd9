"""Pictures a researcher can read: the evaluation's overlay grid and predict.py's overlays.

Both are built as matplotlib Figures from tiny synthetic inputs (no model: the records have the
shape the evaluation protocols write) and checked the way a reader would notice failures: the
PNG is at least 1024 px on its long side even for a 96 px image, no title, header, caption,
legend entry or number label is cut by the figure's edge, and no two of them overlap. A crowded
case (dozens of overlapping predictions) checks that labels that fit nowhere are left out
rather than drawn over each other.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image
from scripts_loader import load_script

from sam_hf.data import rle
from sam_hf.eval.compare import Evaluation, ModelEvaluation
from sam_hf.eval.overlay_grid import overlay_grid, overlay_grid_figure
from sam_hf.eval.pictures import MIN_LONG_SIDE, phrase_colors, prediction_figure

predict_cli = load_script("predict")

H, W = 72, 96  # smaller than the demo's 112-256 px images
PHRASES = ["red disc", "blue square", "red disc"]


def _masks(n: int = 3) -> np.ndarray:
    m = np.zeros((n, H, W), bool)
    for k in range(n):
        y, x = 8 + 20 * (k % 3), 6 + 28 * k % (W - 20)
        m[k, y : y + 16, x : x + 18] = True
    return m


def text_boxes(fig: Figure) -> list[tuple[str, object]]:
    """(text, window extent) of every visible, non-empty Text artist, as drawn."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip():
            out.append((t.get_text(), t.get_window_extent(renderer)))
    return out


def assert_readable(fig: Figure) -> list[str]:
    """Long side >= 1024 px, every text inside the figure, no two texts overlapping."""
    w, h = fig.get_size_inches() * fig.dpi
    assert max(w, h) >= MIN_LONG_SIDE
    boxes = text_boxes(fig)
    frame = fig.bbox
    for text, b in boxes:
        assert frame.x0 <= b.x0 and b.x1 <= frame.x1, f"{text!r} cut at the left/right: {b}"
        assert frame.y0 <= b.y0 and b.y1 <= frame.y1, f"{text!r} cut at the top/bottom: {b}"
    for (ta, a), (tb, b) in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), f"{ta!r} overlaps {tb!r}"
    return [t for t, _ in boxes]


# ----------------------------------------------------------------------------- predict.py


def test_prediction_overlay_is_large_labelled_and_readable():
    img = Image.fromarray(np.full((H, W, 3), 90, np.uint8))
    found = [(p, m, s) for p, m, s in zip(PHRASES, _masks(), [0.91, 0.62, 0.55])]
    fig = prediction_figure(img, found, "frames/img_0001.png")
    texts = assert_readable(fig)
    assert "red disc (2)" in texts and "blue square (1)" in texts  # one legend entry per phrase
    assert {"s 0.91", "s 0.62", "s 0.55"} <= set(texts)  # each mask's score beside it
    assert any("img_0001.png" in t for t in texts)
    # one colour per phrase: both red-disc masks are painted alike, the square differently
    (ax,) = fig.axes
    panel = ax.get_images()[0].get_array()
    colors = phrase_colors(PHRASES)
    assert len(colors) == 2
    k = panel.shape[0] // H
    centre = [panel[(8 + 20 * i + 8) * k, (6 + 28 * i % (W - 20) + 9) * k] for i in range(3)]
    assert (centre[0] == centre[2]).all() and not (centre[0] == centre[1]).all()


def test_prediction_overlay_with_nothing_found_and_crowded(tmp_path):
    img = Image.fromarray(np.full((H, W, 3), 90, np.uint8))
    texts = assert_readable(prediction_figure(img, [], "a.png", phrases=["apple", "pear"]))
    assert "nothing found" in " ".join(texts)
    assert {"apple (0)", "pear (0)"} <= set(texts)  # the phrases asked for, with their counts
    # 60 masks on top of each other: labels that fit nowhere are left out, none drawn over another
    crowd = [("apple", np.roll(_masks(1)[0], k % 3, axis=1), 0.3 + k / 100) for k in range(60)]
    texts = assert_readable(prediction_figure(img, crowd, "crowded.png"))
    assert 0 < sum(t.startswith("s 0.") for t in texts) < 60
    # the script's thin wrapper writes the PNG at the figure's size
    predict_cli.overlay_png(img, crowd[:3], tmp_path / "o.png", "crowded.png")
    assert max(Image.open(tmp_path / "o.png").size) >= MIN_LONG_SIDE


# -------------------------------------------------------------------------- overlay grid


def _row(i: int) -> dict:
    objects = [
        {"segmentation": rle.encode(m), "noun_phrase": p, "category": "shape", "iscrowd": False}
        for m, p in zip(_masks(), PHRASES)
    ]
    rgb = np.full((H, W, 3), 60 + 40 * i, np.uint8)
    return {"image": Image.fromarray(rgb), "height": H, "width": W, "objects": objects}


def _sam2(label: str, iou: float) -> ModelEvaluation:
    m = ModelEvaluation(label, "fine-tuned", SimpleNamespace(family="sam2"), 128, 1)
    recs = []
    for i in range(2):
        pred = np.roll(_masks(), 2 * i, axis=2)
        recs.append(
            {"image_id": str(i), "pred": [rle.encode(x) for x in pred], "phrases": PHRASES,
             "iou": [iou] * 3, "scores": [0.8, 0.7, 0.6], "points": [[15, 16], [43, 36], [71, 56]]}
        )  # fmt: skip
    m.records["point"] = recs
    m.per_image_iou["point"] = {"0": iou, "1": iou - 0.1}
    return m


def _sam3(label: str) -> ModelEvaluation:
    m = ModelEvaluation(label, "baseline", SimpleNamespace(family="sam3"), 112, 1)
    masks = _masks()
    recs = []
    for i in range(2):
        fp = np.zeros((H, W), bool)
        fp[0:6, 66:94] = True  # a kept mask that matches nothing
        pairs = [
            {"phrase": "red disc", "size": [H, W], "gt": [rle.encode(masks[0]), rle.encode(masks[2])],
             "pred": [rle.encode(masks[0]), rle.encode(fp), rle.encode(masks[1])],
             "scores": [0.9, 0.7, 0.2]},
            {"phrase": "green triangle", "size": [H, W], "gt": [], "pred": [rle.encode(fp)],
             "scores": [0.6]},
        ]  # fmt: skip
        recs.append({"image_id": str(i), "pairs": pairs})
    m.records["text"] = recs
    m.per_image_iou["text"] = {"0": 0.5, "1": 0.4}
    return m


@pytest.mark.parametrize("columns", ["sam2", "compare"])
def test_overlay_grid_is_large_labelled_and_readable(columns, tmp_path):
    models = [_sam2("sam2-finetuned", 0.83)]
    if columns == "compare":
        models += [_sam2("sam2-baseline-with-a-long-name", 0.41), _sam3("sam3-baseline")]
    ev = Evaluation("compare", {}, None, models, image_indices={"0": 0, "1": 1})
    fig = overlay_grid_figure(ev, [_row(0), _row(1)])
    texts = assert_readable(fig)
    assert {"ground truth", "red disc", "blue square"} <= set(texts)  # header, legend
    assert "IoU 0.83 s 0.80" in texts  # SAM2: IoU with its instance and score
    if columns == "compare":
        assert "IoU 1.00 s 0.90" in texts and "no match s 0.70" in texts  # SAM3: kept ones
        assert "s 0.20" not in " ".join(texts)  # a prediction below the score cut is not shown
        assert "green triangle" in texts  # a phrase only predicted still has its colour
    path = overlay_grid(ev, [_row(0), _row(1)], tmp_path / "grid.png")
    assert max(Image.open(path).size) >= MIN_LONG_SIDE
