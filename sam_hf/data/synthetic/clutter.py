"""Generic shapes in clutter: the pretraining data that lets a tiny checkpoint transfer.

Why it exists: the ``shapes`` generator draws flat shapes on smooth backgrounds. A model
pretrained on it follows clicks on its own held-out shapes (IoU 0.6) but reaches 0.07-0.19 on
the synthetic orchard zero-shot, where objects are small, shaded and partly hidden in a busy
scene. Real fine-tuning targets (fruit, cells, stones, parts) look like that too, so this
generator keeps the shapes' concepts (``"{color} {shape}"`` phrases, the same negatives) and
puts them in a harder, still generic, scene:

- a background of many unannotated pieces (a "dead leaves" image: pointed leaves, patches,
  thin strokes in a per-image palette), part of it out of focus, so no flat-background
  threshold separates objects from the rest;
- objects shaded as domes (light from one side, sometimes a highlight) with a surface
  texture, many per image and mostly small (2-12 % of the image side in radius);
- unannotated foreground pieces drawn over the objects: occlusion, so the visible mask is what
  remains (objects hidden too much are not drawn at all, as in ``shapes``).

Nothing here draws an apple: no stems, no apple colours model, no foliage renderer; the
orchard generator stays the held-out domain. Determinism: image ``i`` of seed ``s`` depends only
on ``(s, i, image_size)``.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from sam_hf.data.synthetic.drawing import smooth_noise
from sam_hf.data.synthetic.shapes import (
    COLORS,
    SHAPES,
    checked_size,
    finish,
    paint_objects,
    shape_mask,
    visible_objects,
)

GENERATOR_VERSION = "clutter-1"
#: Most annotated objects in one image.
MAX_OBJECTS = 24


def _palette(rng: np.random.Generator) -> np.ndarray:
    """3-4 related colours (one hue family, varied value): what a scene's clutter is made of."""
    hue = rng.uniform(0, 180)
    k = int(rng.integers(3, 5))
    hsv = np.stack(
        [
            (hue + rng.normal(0, 12, k)) % 180,
            rng.uniform(60, 200, k),
            rng.uniform(50, 210, k),
        ],
        1,
    ).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.float32) / 255.0


def _piece(rng: np.random.Generator, cx: float, cy: float, size: float) -> np.ndarray:
    """Outline of one clutter piece: a pointed leaf, an irregular patch or a thin stroke."""
    kind = rng.choice(3, p=[0.6, 0.25, 0.15])
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    if kind == 0:  # pointed leaf: an ellipse pinched at both ends
        x = size * np.cos(t)
        y = size * rng.uniform(0.25, 0.5) * np.sin(t) * np.abs(np.sin(t)) ** 0.3
    elif kind == 1:  # irregular patch
        radius = size * (1 + 0.25 * rng.standard_normal() * np.cos(2 * t + rng.uniform(0, 6)))
        radius *= 1 + 0.15 * np.cos(3 * t + rng.uniform(0, 6))
        x, y = radius * np.cos(t) * rng.uniform(0.5, 1), radius * np.sin(t)
    else:  # stroke (a twig or a grass blade)
        x = size * 1.6 * np.cos(t)
        y = size * rng.uniform(0.04, 0.1) * np.sin(t)
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + x * c - y * s, cy + x * s + y * c], 1)


def _draw_pieces(
    rng: np.random.Generator,
    canvas: np.ndarray,
    n: int,
    size_range: tuple[float, float],
    palette: np.ndarray,
) -> np.ndarray:
    """Draw ``n`` clutter pieces onto ``canvas`` (in place); returns their union (bool)."""
    height, width = canvas.shape[:2]
    cover = np.zeros((height, width), np.uint8)
    lo, hi = np.log(size_range[0]), np.log(size_range[1])
    for _ in range(n):
        size = float(np.exp(rng.uniform(lo, hi))) * min(height, width)
        outline = _piece(rng, rng.uniform(0, width), rng.uniform(0, height), size)
        pts = [np.round(outline).astype(np.int32)]
        colour = palette[int(rng.integers(len(palette)))] * rng.uniform(0.7, 1.2)
        cv2.fillPoly(canvas, pts, tuple(float(v) for v in np.clip(colour, 0, 1)))
        cv2.fillPoly(cover, pts, 1)
    return cover.astype(bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dead-leaves clutter: a blurred far layer and a sharp near layer, with light variation."""
    palette = _palette(rng)
    if rng.random() < 0.3:  # a second family (sky, soil, another material) in some scenes
        palette = np.concatenate([palette, _palette(rng)[:2]])
    t = smooth_noise(rng, height, width, max(height, width) / 4, octaves=3)[..., None]
    canvas = palette[0] * (1 - t) + palette[-1] * t
    _draw_pieces(rng, canvas, int(rng.integers(40, 120)), (0.03, 0.2), palette)
    canvas = cv2.GaussianBlur(canvas, (0, 0), float(rng.uniform(0.8, 3.0)))
    _draw_pieces(rng, canvas, int(rng.integers(10, 80)), (0.02, 0.12), palette)
    light = 0.75 + 0.5 * smooth_noise(rng, height, width, max(height, width) / 2, octaves=2)
    return (canvas * light[..., None]).astype(np.float32)


def _sample_objects(rng: np.random.Generator, height: int, width: int) -> list[dict[str, Any]]:
    """1-4 concepts with several instances each, mostly small; big ones drawn first."""
    n_concepts = int(rng.integers(1, 5))
    pairs = rng.choice(len(COLORS) * len(SHAPES), size=n_concepts, replace=False)
    colors = list(COLORS)
    side = min(height, width)
    objects = []
    for p in pairs:
        count = int(min(rng.geometric(0.25), 10))
        for _ in range(count):
            objects.append(
                {
                    "color": colors[int(p) // len(SHAPES)],
                    "shape": SHAPES[int(p) % len(SHAPES)],
                    "r": max(3.0, side * float(np.exp(rng.uniform(np.log(0.02), np.log(0.12))))),
                    "cx": rng.uniform(0.03, 0.97) * width,
                    "cy": rng.uniform(0.03, 0.97) * height,
                }
            )
    keys = np.array([-o["r"] for o in objects]) + rng.normal(0, 0.02 * side, len(objects))
    return [objects[i] for i in np.argsort(keys, kind="stable")[:MAX_OBJECTS]]


def _paint_dome(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, color: str) -> None:
    """Paint a shape as a lit dome: Lambert shading from the distance to its edge, texture and
    sometimes a highlight, so its inside is not one flat colour."""
    base = np.clip(np.array(COLORS[color], np.float32) * rng.uniform(0.8, 1.15, 3), 0, 1)
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    height = np.sqrt(dist / max(float(dist.max()), 1.0))
    gy, gx = np.gradient(height)
    ang = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(2.0, 6.0)
    lambert = np.clip(0.75 + strength * (gx * np.cos(ang) + gy * np.sin(ang)), 0.35, 1.3)
    shade = lambert * (0.8 + 0.2 * height)
    ys, xs = np.nonzero(mask)
    grain = smooth_noise(rng, *mask.shape, max(float(dist.max()) / 2, 2.0), octaves=2)
    texture = 1 + rng.uniform(0.0, 0.35) * (grain - 0.5)
    pix = base[None] * (shade * texture)[ys, xs, None]
    if rng.random() < 0.5:  # a specular highlight towards the light
        cy = ys.mean() - np.sin(ang) * dist.max() * 0.4
        cx = xs.mean() - np.cos(ang) * dist.max() * 0.4
        spot = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * (0.25 * dist.max() + 0.5) ** 2))
        pix += rng.uniform(0.2, 0.5) * spot[:, None]
    pix += rng.normal(0, 0.02, pix.shape)
    canvas[ys, xs] = np.clip(pix, 0, 1).astype(np.float32)


def render_clutter_image(
    seed: int, index: int, image_size: tuple[int, int] = (256, 256)
) -> dict[str, Any]:
    """Render image ``index`` for ``seed``; the same dict as ``shapes.render_shapes_image``."""
    height, width = checked_size(seed, index, image_size)
    rng = np.random.default_rng([int(seed), 5, int(index)])
    canvas = _background(rng, height, width)
    objects = _sample_objects(rng, height, width)
    masks = [shape_mask(rng, o["shape"], o["cx"], o["cy"], o["r"], height, width) for o in objects]
    # Occluders are decided before anything is painted so that visibility is known first.
    near = _palette(rng)
    front = np.zeros_like(canvas)
    cover = _draw_pieces(rng, front, int(rng.integers(0, 25)), (0.02, 0.1), near)
    keep = visible_objects(masks, cover)
    if not keep:  # every object hidden: drop the occluders rather than return an empty image
        cover[:] = False
        keep = visible_objects(masks, cover)
    label, kept = paint_objects(rng, canvas, masks, objects, keep, _paint_dome)
    label[cover] = 0
    canvas[cover] = front[cover]
    canvas = cv2.GaussianBlur(canvas, (0, 0), float(rng.uniform(0.4, 0.9)))
    canvas += rng.normal(0, 0.02, canvas.shape).astype(np.float32)
    return finish(rng, canvas, label, kept)
