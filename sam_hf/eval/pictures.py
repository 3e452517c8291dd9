"""Pictures a researcher can read: panels big enough to see, text that never collides.

Shared by the evaluation's overlay grid (:mod:`sam_hf.eval.overlay_grid`) and the per-image
overlays of ``scripts/predict.py``. The demo's images are 112-256 px: drawn at that size an
outline is one pixel and a caption is wider than the image, so every picture is at least
:data:`MIN_LONG_SIDE` px on its long side, small images upsampled by nearest neighbour (pixels
stay square and masks exact; bilinear would blur the edges being judged). Masks take one
colour per phrase, named in a legend. The numbers beside each mask go where they fit inside
their panel without covering another label; one that fits nowhere is left out rather than
drawn over its neighbour. Figures use matplotlib's constrained layout (titles, captions and
the legend get room of their own), frozen before the labels are placed so that the positions
measured while placing them are the final ones.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch
from matplotlib.transforms import Bbox
from PIL import Image
from scipy import ndimage

from sam_hf.data.overlays import instance_colors, overlay_masks

#: Every picture is at least this many pixels on its long side.
MIN_LONG_SIDE = 1024
#: Pixels per inch of every figure, so that inches x DPI are the PNG's pixels.
DPI = 100
#: Font size (points) of the numbers beside each mask.
LABEL_FONTSIZE = 8
#: Width of a mask's outline in panel pixels (2, so that matplotlib's nearest-neighbour
#: resampling to the axes' final size never drops the whole outline).
OUTLINE_PX = 2
#: Legend entries beyond this many are summarised as "... and N more".
MAX_LEGEND = 24

RGB = tuple[int, int, int]
BoxXYXY = tuple[float, float, float, float]


@functools.cache
def _scratch_renderer():
    return FigureCanvasAgg(Figure(dpi=DPI)).get_renderer()


def text_width(text: str, fontsize: float) -> float:
    """Width in pixels (at :data:`DPI`) of one line of ``text``."""
    w, _, _ = _scratch_renderer().get_text_width_height_descent(
        text, FontProperties(size=fontsize), ismath=False
    )
    return float(w)


def wrap(text: str, max_px: float, fontsize: float) -> str:
    """``text`` broken at spaces (a too-long word: anywhere) into lines of at most ``max_px``."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            while text_width(word, fontsize) > max_px and len(word) > 1:
                cut = len(word) - 1
                while cut > 1 and text_width(word[:cut], fontsize) > max_px:
                    cut -= 1
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:cut])
                word = word[cut:]
            trial = f"{line} {word}" if line else word
            if line and text_width(trial, fontsize) > max_px:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return "\n".join(lines)


def plural(n: int, word: str) -> str:
    """``"1 mask"``, ``"3 masks"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def line_px(fontsize: float, lines: int = 1) -> float:
    """Height in pixels of ``lines`` lines of text (matplotlib's 1.2 line spacing)."""
    return lines * 1.25 * fontsize * DPI / 72


def panel_size(h: int, w: int, min_side: int, max_side: int) -> tuple[int, int]:
    """(height, width) of an image shown with its long side in [min_side, max_side]: an
    integer multiple when upsampled (nearest neighbour keeps pixels square), else scaled."""
    long = max(h, w)
    if long < min_side:
        k = math.ceil(min_side / long)
        return h * k, w * k
    if long > max_side:
        s = max_side / long
        return max(1, round(h * s)), max(1, round(w * s))
    return h, w


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` at ``size`` (H, W): nearest neighbour upwards, bilinear downwards."""
    h, w = img.shape[:2]
    if (h, w) == tuple(size):
        return img
    if size[0] % h == 0 and size[1] % w == 0 and size[0] // h == size[1] // w:
        k = size[0] // h
        return img.repeat(k, axis=0).repeat(k, axis=1)
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) boolean masks at ``size``, nearest neighbour (a mask stays a mask)."""
    if masks.shape[0] == 0:
        return np.zeros((0, *size), bool)
    h, w = masks.shape[1:]
    if (h, w) == tuple(size):
        return masks.astype(bool, copy=False)
    if size[0] % h == 0 and size[1] % w == 0 and size[0] // h == size[1] // w:
        k = size[0] // h
        return masks.astype(bool).repeat(k, axis=1).repeat(k, axis=2)
    return np.stack(
        [
            np.asarray(
                Image.fromarray(m.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
            )
            > 0
            for m in masks
        ]
    )


def paint(img: np.ndarray, masks: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Masks blended onto ``img`` (same size), each outlined :data:`OUTLINE_PX` wide in its
    pure colour so that touching instances of one phrase stay tellable apart."""
    if masks.shape[0] == 0:
        return img
    out = overlay_masks(img, masks, color=colors, outline=False)
    for m, c in zip(masks, colors):
        if m.any():
            out[m & ~ndimage.binary_erosion(m, iterations=OUTLINE_PX, border_value=0)] = c
    return out


#: The first phrases' colours: saturated hues that stand out against foliage, sky and red,
#: green or yellow fruit (the palette of ``instance_colors`` starts at red, invisible on a red
#: apple); later phrases continue with ``instance_colors``' golden-ratio hues.
PHRASE_PALETTE: tuple[RGB, ...] = (
    (30, 144, 255),  # blue
    (255, 0, 255),  # magenta
    (0, 255, 255),  # cyan
    (255, 215, 0),  # gold
    (148, 0, 211),  # violet
    (255, 128, 0),  # orange
    (255, 255, 255),  # white
    (255, 30, 30),  # red
    (150, 255, 0),  # lime
    (255, 160, 200),  # pink
    (0, 140, 140),  # teal
    (160, 90, 40),  # brown
)


def phrase_colors(phrases: Sequence[str]) -> dict[str, RGB]:
    """One distinct colour per distinct phrase, in order of first appearance."""
    unique = list(dict.fromkeys(phrases))
    extra = instance_colors(max(0, len(unique) - len(PHRASE_PALETTE)))
    palette = list(PHRASE_PALETTE) + [tuple(int(v) for v in c) for c in extra]
    return {p: palette[i] for i, p in enumerate(unique)}


def mask_box(mask: np.ndarray) -> BoxXYXY | None:
    """Pixel box (x0, y0, x1, y1) of a mask's largest connected part, in imshow's data
    coordinates: a label beside it sits next to the object, not next to the empty middle of
    the bounding box of scattered fragments. None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    y0, x0 = ys.min(), xs.min()
    parts, n = ndimage.label(mask[y0 : ys.max() + 1, x0 : xs.max() + 1])
    if n > 1:
        sizes = np.bincount(parts.ravel())[1:]
        sl = ndimage.find_objects(parts)[int(np.argmax(sizes))]
        ys0, ys1, xs0, xs1 = sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1
        return x0 + xs0 - 0.5, y0 + ys0 - 0.5, x0 + xs1 + 0.5, y0 + ys1 + 0.5
    return x0 - 0.5, y0 - 0.5, xs.max() + 0.5, ys.max() + 0.5


def new_figure(width_px: float, height_px: float) -> Figure:
    """A constrained-layout figure of at least :data:`MIN_LONG_SIDE` px on its long side, on an
    Agg canvas (so ``fig.canvas.get_renderer()`` measures text before saving)."""
    scale = max(1.0, MIN_LONG_SIDE / max(width_px, height_px))
    w, h = math.ceil(width_px * scale), math.ceil(height_px * scale)
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def freeze_layout(fig: Figure) -> None:
    """Run the constrained layout once and keep it: text placed afterwards moves nothing."""
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
    fig.set_layout_engine("none")


def _grown(box: Bbox, px: float) -> Bbox:
    return Bbox.from_extents(box.x0 - px, box.y0 - px, box.x1 + px, box.y1 + px)


def place_labels(
    ax: Axes, labels: Sequence[tuple[BoxXYXY, str, RGB]], fontsize: float = LABEL_FONTSIZE
) -> int:
    """Write each label beside its box (above, below, right, left, else on it) where it stays
    inside ``ax`` and clear of the labels placed before; returns how many found no place.

    Call after :func:`freeze_layout`: positions are measured in pixels.
    """
    renderer = ax.figure.canvas.get_renderer()
    ax.apply_aspect()  # an image's axes shrink to its aspect when drawn: measure that frame
    frame = ax.get_window_extent(renderer)
    taken: list[Bbox] = []
    missed = 0
    pad = 2.0  # the label's background box reaches this far beyond its text
    for (x0, y0, x1, y1), text, rgb in labels:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        spots = [
            (cx, y0, "center", "bottom"),
            (cx, y1, "center", "top"),
            (x1, cy, "left", "center"),
            (x0, cy, "right", "center"),
            (cx, cy, "center", "center"),
        ]
        t = ax.text(0, 0, text, fontsize=fontsize, color="white", clip_on=True)
        t.set_bbox(
            {"facecolor": "black", "alpha": 0.7, "pad": 1.0, "edgecolor": np.divide(rgb, 255)}
        )
        for x, y, ha, va in spots:
            t.set_position((x, y))
            t.set_horizontalalignment(ha)
            t.set_verticalalignment(va)
            box = _grown(t.get_window_extent(renderer), pad)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1
            inside = inside and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(b) for b in taken):
                taken.append(box)
                break
        else:
            t.remove()
            missed += 1
    return missed


def phrase_legend(
    fig: Figure, colors: dict[str, RGB], width_px: float, counts: dict[str, int] | None = None
) -> None:
    """A legend below the panels: each phrase's colour (and its count), in columns that fit."""
    names = list(colors)
    shown = names[:MAX_LEGEND]
    labels = [p if counts is None else f"{p} ({counts.get(p, 0)})" for p in shown]
    labels = [wrap(lab, 0.8 * width_px, 9) for lab in labels]
    handles = [Patch(facecolor=np.divide(colors[p], 255), edgecolor="black") for p in shown]
    if len(names) > len(shown):
        labels.append(f"... and {len(names) - len(shown)} more phrases")
        handles.append(Patch(facecolor="none", edgecolor="none"))
    if not handles:
        return
    entry = max(text_width(line, 9) for lab in labels for line in lab.split("\n")) + 50
    ncols = max(1, min(len(handles), int(0.9 * width_px // entry)))
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=9, title=None)


def legend_height(colors: dict[str, RGB], width_px: float) -> float:
    """Pixels :func:`phrase_legend` will take (for sizing the figure before drawing)."""
    n = min(len(colors), MAX_LEGEND) + (len(colors) > MAX_LEGEND)
    if n == 0:
        return 0.0
    entry = max(text_width(p, 9) for p in colors) + 50
    ncols = max(1, min(n, int(0.9 * width_px // entry)))
    return line_px(9, math.ceil(n / ncols)) * 1.3 + 16


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` (its size is exactly the figure's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def prediction_figure(
    image: Image.Image,
    found: Sequence[tuple[str, np.ndarray, float]],
    title: str = "",
    phrases: Sequence[str] = (),
) -> Figure:
    """One image with every kept mask (``(phrase, mask, score)``): one colour per phrase, the
    score beside each mask, a legend with the count per phrase, a title naming the image.

    ``phrases``: the phrases asked for (SAM3), listed first in the legend even when nothing
    was found for them, so that each phrase has the same colour in every image of a run."""
    img = np.asarray(image.convert("RGB"))
    h, w = img.shape[:2]
    ph, pw = panel_size(h, w, MIN_LONG_SIDE, 2 * MIN_LONG_SIDE)
    masks = np.stack([m for _, m, _ in found]) if found else np.zeros((0, h, w), bool)
    masks = resize_masks(masks.astype(bool), (ph, pw))
    colors = phrase_colors([*phrases, *(p for p, _, _ in found)])
    counts = {p: sum(1 for q, _, _ in found if q == p) for p in colors}
    rgb = np.asarray([colors[p] for p, _, _ in found], dtype=np.uint8).reshape(-1, 3)
    panel = paint(resize_image(img, (ph, pw)), masks, rgb)
    width = pw + 40
    head = f"{title}: " if title else ""
    empty = sum(1 for _, m, _ in found if not m.any())
    what = plural(len(found), "mask") + (f" ({empty} empty)" if empty else "")
    what = f"{what}; beside each: s = its score" if found else "nothing found"
    heading = wrap(head + what, width - 40, 11)
    height = ph + line_px(11, heading.count("\n") + 1) + 30 + legend_height(colors, width)
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    ax.imshow(panel, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(heading, fontsize=11)
    phrase_legend(fig, colors, fig.get_figwidth() * DPI, counts)
    freeze_layout(fig)
    labels = []
    for (phrase, _, score), m in zip(found, masks):
        box = mask_box(m)
        if box is not None:
            labels.append((box, f"s {score:.2f}", colors[phrase]))
    place_labels(ax, labels, fontsize=LABEL_FONTSIZE + 2)  # one image: room for larger text
    return fig
