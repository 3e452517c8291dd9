"""Generic synthetic shapes: the pretraining data of the tiny demo checkpoints.

Why it exists: a tiny SAM2/SAM3 trained from random weights on this CPU learns to segment
"everything foreground" but not to follow a point, a box or a phrase within a demo's time
budget. The demos therefore fine-tune a small checkpoint that was pretrained, for longer, on
this generic data: coloured shapes (circle, square, triangle, star, ...) in several colours and
sizes, overlapping, on random textured backgrounds, each with a noun phrase
``"{color} {shape}"``. That teaches prompt following and colour/shape words, and it contains no
apples on purpose, so fine-tuning on the synthetic orchard afterwards is a real transfer (new
object, new attributes such as ripeness and damage).

Masks are the visible parts; a shape that would be hidden too much by later shapes is not drawn
at all, so no unannotated fragments of a phrase remain in the image (which would otherwise
contradict that phrase's negatives). ``negative_phrases`` lists absent colour/shape pairs,
mostly hard ones (same colour or same shape as something present).

Determinism: image ``i`` of seed ``s`` depends only on ``(s, i, image_size)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from sam_hf.data.synthetic.drawing import smooth_noise

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ellipse",
    "ring",
    "cross",
    "hexagon",
    "blob",
)
#: Colour names and their base RGB (floats); the rendering jitters them a little.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.16, 0.68, 0.20),
    "blue": (0.14, 0.30, 0.86),
    "yellow": (0.95, 0.86, 0.16),
    "purple": (0.54, 0.20, 0.70),
    "orange": (0.98, 0.55, 0.10),
    "white": (0.96, 0.96, 0.96),
    "black": (0.06, 0.06, 0.07),
}
#: Visible-area floor in pixels and as a share of the shape's own area: below either, a shape
#: is not drawn (its identity could no longer be read from what is left).
MIN_VISIBLE_AREA = 16
MIN_VISIBLE_FRACTION = 0.3
#: Most shapes drawn in one image (many small objects per image, as in orchards and cells).
MAX_OBJECTS = 16
GENERATOR_VERSION = "shapes-2"


def shape_phrase(color: str, shape: str) -> str:
    """Noun phrase of a shape: ``"{color} {shape}"``."""
    return f"{color} {shape}"


def _polygon(n: int, r: float, angle: float, inner: float | None = None) -> np.ndarray:
    """Regular polygon (or star when ``inner`` is given) around the origin, float (k, 2)."""
    k = 2 * n if inner is not None else n
    t = angle + np.arange(k) * 2 * np.pi / k
    radii = np.full(k, r)
    if inner is not None:
        radii[1::2] = r * inner
    return np.stack([radii * np.cos(t), radii * np.sin(t)], 1)


def shape_mask(
    rng: np.random.Generator, shape: str, cx: float, cy: float, r: float, height: int, width: int
) -> np.ndarray:
    """Bool (H, W) mask of one shape of circumradius ``r`` at (cx, cy), randomly rotated."""
    mask = np.zeros((height, width), np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    centre = np.array([cx, cy])
    ctr = (int(round(cx)), int(round(cy)))

    def poly(points: np.ndarray) -> None:
        cv2.fillPoly(mask, [np.round(points + centre).astype(np.int32)], 1)

    if shape == "circle":
        cv2.circle(mask, ctr, int(round(r)), 1, -1)
    elif shape == "ellipse":
        axes = (int(round(r)), max(1, int(round(r * rng.uniform(0.45, 0.7)))))
        cv2.ellipse(mask, ctr, axes, float(np.degrees(angle)), 0, 360, 1, -1)
    elif shape == "ring":
        cv2.circle(mask, ctr, int(round(r)), 1, -1)
        cv2.circle(mask, ctr, max(1, int(round(r * rng.uniform(0.45, 0.62)))), 0, -1)
    elif shape == "square":
        poly(_polygon(4, r, angle))
    elif shape == "triangle":
        poly(_polygon(3, r, angle))
    elif shape == "hexagon":
        poly(_polygon(6, r, angle))
    elif shape == "star":
        poly(_polygon(5, r, angle, inner=rng.uniform(0.4, 0.5)))
    elif shape == "blob":
        poly(_blob(rng, r))
    elif shape == "cross":
        arm = r * rng.uniform(0.28, 0.36)
        bar = np.array([[-r, -arm], [r, -arm], [r, arm], [-r, arm]])
        poly(bar @ _rot(angle))
        poly(bar @ _rot(angle + np.pi / 2))
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return mask.astype(bool)


def _blob(rng: np.random.Generator, r: float) -> np.ndarray:
    """An irregular round outline: radius r with a few random low-frequency wobbles.

    Round, lumpy objects (fruit, stones, cells) are what fine-tuning targets most often look
    like; regular polygons alone would teach a model that every object has straight edges.
    """
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    radius = np.ones_like(t)
    for k in (2, 3, 4):
        radius += rng.uniform(0.0, 0.12) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    return np.stack([r * radius * np.cos(t), r * radius * np.sin(t)], 1)


def _rot(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, s], [-s, c]])


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random mid-tone texture: noise blend, stripes, checker or gradient, plus grain.

    Mid tones and low saturation keep every shape colour (white and black included) readable,
    while the texture stops a model from solving the task with a flat-background threshold.
    """

    def muted() -> np.ndarray:
        c = rng.uniform(0, 1, 3)
        grey = rng.uniform(0.3, 0.65)
        return (grey + (c - c.mean()) * rng.uniform(0.15, 0.45)).astype(np.float32)

    a, b = muted(), muted()
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = max(height, width)
    if kind == 0:
        t = smooth_noise(rng, height, width, side / rng.uniform(3, 10), octaves=4)
    elif kind == 1:
        ang = rng.uniform(0, np.pi)
        period = side / rng.uniform(4, 20)
        proj = xx * np.cos(ang) + yy * np.sin(ang)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / period)
    elif kind == 2:
        ang = rng.uniform(0, np.pi / 2)
        cell = side / rng.uniform(4, 12)
        u = (xx * np.cos(ang) + yy * np.sin(ang)) / cell
        v = (-xx * np.sin(ang) + yy * np.cos(ang)) / cell
        t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    else:
        ang = rng.uniform(0, 2 * np.pi)
        proj = (xx - width / 2) * np.cos(ang) + (yy - height / 2) * np.sin(ang)
        t = np.clip(proj / side + 0.5, 0, 1)
    t = np.clip(t + 0.25 * (smooth_noise(rng, height, width, side / 30, 2) - 0.5), 0, 1)
    canvas = a * (1 - t[..., None]) + b * t[..., None]
    canvas += rng.normal(0, 0.025, canvas.shape).astype(np.float32)
    return canvas.astype(np.float32)


def _sample_objects(rng: np.random.Generator, height: int, width: int) -> list[dict[str, Any]]:
    """A few concepts (colour/shape pairs), each with one or more instances of varied size."""
    n_concepts = int(rng.integers(1, 6))
    pairs = rng.choice(len(COLORS) * len(SHAPES), size=n_concepts, replace=False)
    colors = list(COLORS)
    objects = []
    side = min(height, width)
    for p in pairs:
        color, shape = colors[int(p) // len(SHAPES)], SHAPES[int(p) % len(SHAPES)]
        for _ in range(int(min(rng.geometric(0.4), 6))):
            r = side * float(np.exp(rng.uniform(np.log(0.025), np.log(0.2))))
            objects.append(
                {
                    "color": color,
                    "shape": shape,
                    "r": r,
                    "cx": rng.uniform(0.05, 0.95) * width,
                    "cy": rng.uniform(0.05, 0.95) * height,
                }
            )
    # Bigger shapes mostly underneath, so small ones stay visible on top of them.
    keys = np.array([-o["r"] for o in objects]) + rng.normal(0, 0.03 * side, len(objects))
    return [objects[i] for i in np.argsort(keys, kind="stable")[:MAX_OBJECTS]]


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, color: str) -> None:
    """Fill a (non-empty) shape with its colour, soft linear shading, grain, maybe a dark rim."""
    base = np.clip(np.array(COLORS[color], np.float32) * rng.uniform(0.9, 1.1, 3), 0, 1)
    base = np.clip(base * rng.uniform(0.85, 1.08), 0, 1)
    ys, xs = np.nonzero(mask)
    ang = rng.uniform(0, 2 * np.pi)
    proj = xs * np.cos(ang) + ys * np.sin(ang)
    span = max(float(np.ptp(proj)), 1.0)
    shade = 1.0 + rng.uniform(0.05, 0.2) * ((proj - proj.min()) / span - 0.5)
    pix = base[None] * shade.astype(np.float32)[:, None]
    pix += rng.normal(0, 0.02, pix.shape).astype(np.float32)
    canvas[ys, xs] = np.clip(pix, 0, 1)
    if rng.random() < 0.3:
        rim = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        canvas[rim] *= 0.6


def negatives(
    rng: np.random.Generator, present: set[tuple[str, str]], k_hard: int = 4, k_easy: int = 2
) -> list[str]:
    """Absent colour/shape phrases: mostly hard (shares a colour or shape with one present)."""
    hard, easy = [], []
    for color in COLORS:
        for shape in SHAPES:
            if (color, shape) in present:
                continue
            related = any(color == c or shape == s for c, s in present)
            (hard if related else easy).append(shape_phrase(color, shape))
    pick_h = rng.choice(len(hard), size=min(k_hard, len(hard)), replace=False) if hard else []
    pick_e = rng.choice(len(easy), size=min(k_easy, len(easy)), replace=False) if easy else []
    return [hard[int(i)] for i in sorted(pick_h)] + [easy[int(i)] for i in sorted(pick_e)]


def checked_size(seed: int, index: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of ``image_size``, after checking the renderers' arguments."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    height, width = (int(v) for v in image_size)
    if height < 16 or width < 16:
        raise ValueError(f"image_size must be at least 16x16 pixels, got {tuple(image_size)!r}")
    return height, width


def visible_objects(masks: list[np.ndarray], cover: np.ndarray | None = None) -> list[int]:
    """Indices of the shapes that stay readable when drawn in order (under ``cover``, if any).

    Visibility is measured with every shape drawn; removing a failing shape only uncovers the
    others, so one pass leaves every kept shape at least as visible as measured here.
    """
    if not masks:
        return []
    order = np.zeros(masks[0].shape, np.int32)
    for k, m in enumerate(masks, 1):
        order[m] = k
    if cover is not None:
        order[cover] = 0
    visible = np.bincount(order.ravel(), minlength=len(masks) + 1)[1:]
    return [
        k
        for k, m in enumerate(masks)
        if visible[k] >= MIN_VISIBLE_AREA and visible[k] >= MIN_VISIBLE_FRACTION * m.sum()
    ]


def render_shapes_image(
    seed: int, index: int, image_size: tuple[int, int] = (256, 256)
) -> dict[str, Any]:
    """Render image ``index`` for ``seed``: ``{"image", "label_map", "objects", "negative_phrases"}``.

    ``label_map`` is uint16 (0 background, k = ``objects[k - 1]``); ``objects`` holds
    ``{"color", "shape"}`` per visible instance, in draw order (back to front).
    """
    height, width = checked_size(seed, index, image_size)
    rng = np.random.default_rng([int(seed), 3, int(index)])
    canvas = _background(rng, height, width)
    objects = _sample_objects(rng, height, width)
    masks = [shape_mask(rng, o["shape"], o["cx"], o["cy"], o["r"], height, width) for o in objects]
    label, kept = paint_objects(rng, canvas, masks, objects, visible_objects(masks), _paint)
    return finish(rng, cv2.GaussianBlur(canvas, (0, 0), 0.5), label, kept)


def paint_objects(
    rng: np.random.Generator,
    canvas: np.ndarray,
    masks: list[np.ndarray],
    objects: list[dict[str, Any]],
    keep: list[int],
    paint: Callable[[np.random.Generator, np.ndarray, np.ndarray, str], None],
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Paint the kept shapes back to front; their label map (uint16) and ``{"color", "shape"}``."""
    label = np.zeros(canvas.shape[:2], np.uint16)
    kept = []
    for new_id, k in enumerate(keep, 1):
        paint(rng, canvas, masks[k], objects[k]["color"])
        label[masks[k]] = new_id
        kept.append({"color": objects[k]["color"], "shape": objects[k]["shape"]})
    return label, kept


def finish(
    rng: np.random.Generator, canvas: np.ndarray, label: np.ndarray, kept: list[dict[str, str]]
) -> dict[str, Any]:
    """The renderers' result: uint8 image, label map, objects and negatives for what is drawn."""
    rgb = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    present = {(o["color"], o["shape"]) for o in kept}
    return {
        "image": rgb,
        "label_map": label,
        "objects": kept,
        "negative_phrases": negatives(rng, present),
    }
