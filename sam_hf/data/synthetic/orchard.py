"""Synthetic orchard: procedurally drawn apples in foliage, the embedded default data set.

Why it exists: the demos and the tests need orchard-like data that is offline, small, free to
redistribute and exactly reproducible. The real MinneApple frames cannot ship with the code
and carry no attributes, so this module draws scenes that mimic them: many small apples
(MinneApple's median apple is ~500-600 px in a 720x1280 frame, so at 256 px most apples are
only a few pixels wide) hanging in clusters from branches, some big foreground apples, all
partly hidden by leaves and by each other, on a textured canopy with sky patches. Apples are
shaded spheres with a highlight, a stem cavity, a stem and colour blush, so a segmentation
model has to learn colour *and* shape, not a colour threshold.

Each apple carries attributes ``{"color": red|green|yellow, "ripeness": ripe|unripe,
"health": healthy|damaged}`` drawn with orchard-like correlations (an image has one variety
and one maturity stage; unripe apples mostly look green; damage is a brown bruise or dark
scab spots) and a noun phrase such as ``"ripe red apple"`` or ``"damaged unripe green
apple"``. Each image lists ``negative_phrases`` known to be absent from it.

Instance masks hold the *visible* part only (later apples, leaves and stems occlude earlier
ones); instances with fewer than :data:`MIN_VISIBLE_AREA` visible pixels are dropped. The
same data is written in the real MinneApple layout and as COCO-text json, and can be
streamed as schema rows (:func:`iter_orchard_rows`) without touching the disk.

Determinism: image ``i`` of seed ``s`` depends only on ``(s, i, image_size)`` (its own
``numpy`` generator), so the same seed gives byte-identical files, and asking for more
images keeps the earlier ones unchanged.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import datasets
import numpy as np
from PIL import Image
from scipy.special import ndtri

from sam_hf.data import rle
from sam_hf.data.output import atomic_output, clean_leftovers, pid_alive
from sam_hf.data.schema import FEATURES, make_object

#: Attribute values, in the canonical order used for phrases and summaries.
COLORS: tuple[str, ...] = ("red", "green", "yellow")
RIPENESS: tuple[str, ...] = ("ripe", "unripe")
HEALTH: tuple[str, ...] = ("healthy", "damaged")
#: Fruit that never appears in the orchard: plain-noun negatives for text grounding.
OTHER_OBJECTS: tuple[str, ...] = ("pear", "orange", "peach", "plum", "lemon", "tomato")
CATEGORY = "apple"
#: Instances with fewer visible pixels than this are dropped (too small to annotate).
MIN_VISIBLE_AREA = 8
#: Bumped whenever the drawing changes, so cached datasets built from older code are not reused.
GENERATOR_VERSION = "orchard-1"

# Geometric mean of a MinneApple frame side (sqrt(720 * 1280)); sizes below are given in
# pixels at that scale and multiplied by sqrt(H * W) / 960.
_REFERENCE_SIDE = 960.0
# zlib level for PNGs: measured ~1.5x faster than PIL's default 6, files ~10 % larger (the
# sensor noise makes them hard to compress at any level).
_PNG_COMPRESS_LEVEL = 3


# ----------------------------------------------------------------------------------------
# Phrases
# ----------------------------------------------------------------------------------------


def apple_phrase(attributes: dict[str, str]) -> str:
    """Noun phrase of an apple: ``"{ripeness} {color} apple"``, ``"damaged "`` in front if so."""
    base = f"{attributes['ripeness']} {attributes['color']} {CATEGORY}"
    return f"damaged {base}" if attributes.get("health") == "damaged" else base


def _negative_phrases(
    drawn: list[dict[str, str]], rng: np.random.Generator, num_other_objects: int = 2
) -> list[str]:
    """Phrases absent from an image whose drawn apples (visible or not) have ``drawn`` attributes.

    A damaged ripe red apple is still a ripe red apple, so ``"ripe red apple"`` is only a
    negative when no ripe red apple of any health is present. Damaged phrases are listed only
    where the healthy form is present (the hard negatives: same apples, no damage); the
    others are implied by the base phrase. ``num_other_objects`` absent fruit nouns follow.
    """
    present = {(a["ripeness"], a["color"]) for a in drawn}
    damaged = {(a["ripeness"], a["color"]) for a in drawn if a["health"] == "damaged"}
    out = []
    for ripeness in RIPENESS:
        for color in COLORS:
            key = (ripeness, color)
            if key not in present:
                out.append(f"{ripeness} {color} {CATEGORY}")
            elif key not in damaged:
                out.append(f"damaged {ripeness} {color} {CATEGORY}")
    picks = rng.choice(len(OTHER_OBJECTS), size=num_other_objects, replace=False)
    out.extend(OTHER_OBJECTS[int(i)] for i in sorted(picks))
    return out


# ----------------------------------------------------------------------------------------
# Small drawing helpers (shared with sam_hf.data.synthetic.shapes)
# ----------------------------------------------------------------------------------------


def smooth_noise(
    rng: np.random.Generator, height: int, width: int, cell: float, octaves: int = 3
) -> np.ndarray:
    """Value noise in about [0, 1], float32 (H, W): random grids upsampled by bicubic resize.

    ``cell`` is the feature size of the coarsest octave in pixels; each further octave halves
    it at half the amplitude. Resizing tiny random grids is what keeps textures cheap at
    720x1280 (no per-pixel Python work).
    """
    total = np.zeros((height, width), np.float32)
    amp, norm = 1.0, 0.0
    for octave in range(octaves):
        c = max(cell / 2**octave, 1.0)
        gh, gw = int(np.ceil(height / c)) + 2, int(np.ceil(width / c)) + 2
        grid = rng.random((gh, gw), dtype=np.float32)
        up = cv2.resize(grid, (int(gw * c), int(gh * c)), interpolation=cv2.INTER_CUBIC)
        total += amp * up[:height, :width]
        norm += amp
        amp *= 0.5
    return total / norm


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8, L uint8 or 16-bit array (deterministic for equal input)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def mask_png(label_map: np.ndarray) -> bytes:
    """Instance-id map -> PNG: 8-bit single channel, or 16-bit when ids exceed 255."""
    if int(label_map.max(initial=0)) <= 255:
        return encode_png(label_map.astype(np.uint8))
    return encode_png(label_map.astype(np.uint16))


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _clip_box(
    cx: float, cy: float, half: float, height: int, width: int
) -> tuple[int, int, int, int] | None:
    x0, x1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)) + 1, width)
    y0, y1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


# ----------------------------------------------------------------------------------------
# Scene elements
# ----------------------------------------------------------------------------------------


@dataclass
class _Apple:
    cx: float
    cy: float
    r: float  # radius in pixels
    depth: float  # 0 far .. 1 near; draw order
    attributes: dict[str, str] = field(default_factory=dict)


# (ripeness, color) -> primary albedo, secondary (blush/ground) albedo, primary coverage range,
# streaks. sRGB-ish floats in [0, 1].
_PALETTE: dict[tuple[str, str], tuple[tuple, tuple, tuple, bool]] = {
    ("ripe", "red"): ((0.70, 0.09, 0.08), (0.86, 0.60, 0.22), (0.70, 0.95), True),
    ("unripe", "red"): ((0.64, 0.20, 0.11), (0.58, 0.68, 0.26), (0.30, 0.55), True),
    ("ripe", "yellow"): ((0.93, 0.80, 0.30), (0.92, 0.56, 0.20), (0.80, 1.00), False),
    ("unripe", "yellow"): ((0.82, 0.82, 0.42), (0.62, 0.72, 0.30), (0.60, 0.90), False),
    ("ripe", "green"): ((0.50, 0.78, 0.27), (0.76, 0.80, 0.34), (0.75, 1.00), False),
    ("unripe", "green"): ((0.36, 0.56, 0.17), (0.46, 0.62, 0.22), (0.60, 1.00), False),
}
# Unripe apples are drawn smaller than ripe ones by this factor.
_UNRIPE_SIZE = 0.85
_BRUISE = np.array([0.36, 0.22, 0.10], np.float32)
_SCAB = np.array([0.13, 0.10, 0.06], np.float32)
_STEM = (0.30, 0.21, 0.11)


def _sample_attributes(
    rng: np.random.Generator, variety: str, p_ripe: float, p_damaged: float, radius: float
) -> dict[str, str]:
    """One apple's attributes with orchard correlations.

    Ripe apples show the image's variety colour (sometimes another); unripe ones mostly look
    green whatever the variety. Damage is only assigned where it can be seen (drawn radius
    >= 5 px).
    """
    ripe = rng.random() < p_ripe
    if ripe:
        if rng.random() < 0.85:
            color = variety
        else:
            others = [c for c in COLORS if c != variety]
            color = others[int(rng.integers(len(others)))]
    else:
        color = "green" if rng.random() < 0.75 else variety
    if not ripe:
        radius *= _UNRIPE_SIZE
    damaged = rng.random() < p_damaged and radius >= 5.0
    return {
        "color": color,
        "ripeness": "ripe" if ripe else "unripe",
        "health": "damaged" if damaged else "healthy",
    }


def _draw_apple(
    canvas: np.ndarray,
    label: np.ndarray,
    apple: _Apple,
    inst_id: int,
    light: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Shade one apple into ``canvas`` and write ``inst_id`` where it covers >= half a pixel.

    Shape: a slightly flattened disk with low-order wobble and a dimple at the stem. Shading:
    Lambert + ambient on the sphere normal, a Blinn highlight, a darker stem cavity, a colour
    blush (with streaks for red varieties), fine skin noise, damage, a soft contact shadow
    and a stem that may occlude whatever lies behind it.
    """
    height, width = label.shape
    r = apple.r
    box = _clip_box(apple.cx, apple.cy, 1.6 * r + 2, height, width)
    # Parameters are drawn even for an off-canvas apple so the random stream stays aligned.
    tilt = rng.normal(0.0, 0.25)
    e2 = rng.uniform(0.02, 0.06)
    a3, p3 = rng.uniform(0.0, 0.025), rng.uniform(0, 2 * np.pi)
    a5, p5 = rng.uniform(0.0, 0.015), rng.uniform(0, 2 * np.pi)
    dimple = rng.uniform(0.04, 0.09) if r >= 4 else 0.0
    primary, secondary, coverage, streaks = _PALETTE[
        (apple.attributes["ripeness"], apple.attributes["color"])
    ]
    tint = rng.uniform(0.9, 1.1, 3) * rng.uniform(0.85, 1.08)
    primary = np.clip(np.array(primary, np.float32) * tint, 0, 1)
    secondary = np.clip(np.array(secondary, np.float32) * rng.uniform(0.92, 1.08, 3), 0, 1)
    cover = rng.uniform(*coverage)
    blush_dir = rng.uniform(0, 2 * np.pi)
    freqs = rng.uniform(1.5, 4.0, (3, 2)) * rng.choice([-1, 1], (3, 2))
    phases = rng.uniform(0, 2 * np.pi, 3)
    n_streaks = rng.uniform(12, 24)
    ambient = rng.uniform(0.25, 0.38)
    ks, shininess = rng.uniform(0.2, 0.45), rng.uniform(15, 45)
    damage_kind = "bruise" if (rng.random() < 0.6 or r < 9) else "scab"
    bruise_c = rng.uniform(-0.35, 0.35, 2) + np.array([-light[0], -light[1]]) * 0.2
    bruise_r = rng.uniform(0.28, 0.45) if r < 9 else rng.uniform(0.18, 0.4)
    n_spots = int(rng.integers(3, 8))
    spots = rng.uniform(-0.6, 0.6, (n_spots, 2))
    spot_r = rng.uniform(0.06, 0.13, n_spots)
    stem_side = rng.uniform(-0.35, 0.35)
    has_stem = r >= 6 and rng.random() < 0.8
    if box is None:
        return
    x0, y0, x1, y1 = box
    # Apples under 5 px radius skip details no one could see (streaks, skin grain, cavity).
    detailed = r >= 5
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(apple.cx)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(apple.cy)
    ct, st = np.cos(tilt), np.sin(tilt)
    u = (dx * ct + dy * st) / r  # apple frame, v points from stem (top) to calyx
    v = (-dx * st + dy * ct) / r
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    top = np.mod(phi + 1.5 * np.pi, 2 * np.pi) - np.pi  # signed angle from the stem direction
    outline = 1.0 + e2 * np.cos(2 * phi)
    if detailed:
        outline = (
            outline
            + a3 * np.cos(3 * phi + p3)
            + a5 * np.cos(5 * phi + p5)
            - dimple * np.exp(-((top / 0.32) ** 2))
        )
    signed = (outline - rho) * r  # >0 inside, in pixels
    alpha = np.clip(0.5 + signed, 0.0, 1.0)[..., None]
    body = signed >= 0

    # Contact shadow: darken what lies just behind the apple, away from the light.
    sdx = dx / r + light[0] * 0.3
    sdy = dy / r + light[1] * 0.3
    shadow = np.clip(1.25 - np.hypot(sdx, sdy), 0.0, 0.35) / 0.35
    patch = canvas[y0:y1, x0:x1]
    patch *= (1.0 - 0.4 * shadow)[..., None]

    # Sphere normal in the image frame (shape already carries the outline wobble).
    q = np.clip(rho / outline, 0.0, 1.0)
    inv = 1.0 / (outline * r)
    nx, ny = dx * inv, dy * inv
    nz = np.sqrt(np.clip(1.0 - q**2, 0.0, 1.0))

    # Albedo: blush between primary and secondary colour, streaks, skin noise.
    proj = u * np.cos(blush_dir) + v * np.sin(blush_dir)
    if detailed:
        wobble = sum(
            np.sin(freqs[k, 0] * u + freqs[k, 1] * v + phases[k]) for k in range(3)
        ) / np.float32(3)
        proj = proj + 0.35 * wobble
    mix = np.clip((proj + (cover - 0.5) * 2.4) / 0.5 + 0.5, 0.0, 1.0)
    if streaks and detailed:
        # Streaks follow meridians (stem to calyx): stripes in longitude seen from the side.
        lon = np.arctan2(u / outline, nz + 1e-3)
        stripes = np.sin(n_streaks * lon + 2.0 * wobble)
        mix = np.clip(mix + 0.35 * stripes * mix * (1 - mix) * 4, 0, 1)
    albedo = primary * mix[..., None] + secondary * (1.0 - mix[..., None])
    if detailed:
        grain = 1.0 + 0.05 * rng.standard_normal(u.shape, dtype=np.float32)
        cavity = np.exp(-((u**2 + (v + 0.8) ** 2) / (2 * 0.14**2)))
        albedo *= (grain * (1.0 - 0.45 * cavity))[..., None]

    matte = np.float32(0.0)
    if apple.attributes["health"] == "damaged":
        if damage_kind == "bruise":
            d = np.hypot(u - bruise_c[0], v - bruise_c[1]) / bruise_r
            b = np.clip((1.0 - d) * 3.0, 0.0, 1.0) * 0.9
            albedo = albedo * (1 - b[..., None]) + _BRUISE * b[..., None]
        else:
            b = np.zeros_like(u)
            for (su, sv), sr in zip(spots, spot_r):
                b = np.maximum(b, np.clip((1.0 - np.hypot(u - su, v - sv) / sr) * 4.0, 0.0, 1.0))
            albedo = albedo * (1 - b[..., None]) + _SCAB * b[..., None]
        matte = b

    diffuse = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0)
    half = light + np.array([0.0, 0.0, 1.0], np.float32)
    half /= np.linalg.norm(half)
    spec = ks * np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0.0, 1.0) ** shininess
    spec *= 1.0 - matte
    color = albedo * (ambient + (1.0 - ambient) * diffuse)[..., None] + spec[
        ..., None
    ] * np.float32(0.95)
    patch[:] = patch * (1.0 - alpha) + color * alpha
    label[y0:y1, x0:x1][body] = inst_id

    if has_stem:
        top_uv = np.array([0.0, -0.78])
        end_uv = np.array([stem_side, -1.3])

        def to_img(p: np.ndarray) -> tuple[int, int]:
            return (
                int(round(apple.cx + r * (p[0] * ct - p[1] * st))) - x0,
                int(round(apple.cy + r * (p[0] * st + p[1] * ct))) - y0,
            )

        stem = np.zeros(body.shape, np.uint8)
        cv2.line(stem, to_img(top_uv), to_img(end_uv), 1, max(1, int(round(r / 9))))
        stem = stem.astype(bool)
        patch[stem] = _STEM
        label[y0:y1, x0:x1][stem & ~body] = 0


@dataclass
class _Leaves:
    """A batch of leaves as arrays: outlines, colours, sizes and depths (draw order)."""

    polys: np.ndarray  # (N, 18, 2) int32 outline points
    colors: np.ndarray  # (N, 3) float32
    lengths: np.ndarray  # (N,) pixels
    depth: np.ndarray  # (N,)

    @staticmethod
    def concat(parts: list[_Leaves]) -> _Leaves:
        return _Leaves(*(np.concatenate([getattr(p, f) for p in parts]) for f in _LEAF_FIELDS))


_LEAF_FIELDS = ("polys", "colors", "lengths", "depth")

# Leaf greens: shaded, mid, sunlit/backlit, yellowing, bluish shade.
_LEAF_KINDS = np.array(
    [
        [0.10, 0.22, 0.06],
        [0.22, 0.40, 0.10],
        [0.45, 0.60, 0.18],
        [0.50, 0.50, 0.16],
        [0.16, 0.30, 0.14],
    ],
    np.float32,
)


def _leaf_batch(
    rng: np.random.Generator,
    cx: np.ndarray,
    cy: np.ndarray,
    length: np.ndarray,
    depth: np.ndarray,
    brightness: np.ndarray,
    angle: np.ndarray | None = None,
) -> _Leaves:
    """Pointed, slightly bent leaf outlines and greens for many leaves at once (vectorised)."""
    n = len(cx)
    if angle is None:
        angle = rng.uniform(0, 2 * np.pi, n)
    width = length * rng.uniform(0.35, 0.55, n)
    bend = rng.uniform(-0.12, 0.12, n)
    t = np.linspace(0.0, 1.0, 9)[None]
    x = (t - 0.5) * length[:, None]
    half = 0.5 * width[:, None] * np.sin(np.pi * t) ** 0.8 * (1.15 - 0.3 * t)
    b = bend[:, None] * length[:, None] * (2 * t - 1) ** 2
    px = np.concatenate([x, x[:, ::-1]], 1)
    py = np.concatenate([b - half, (b + half)[:, ::-1]], 1)
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    polys = np.stack([px * c - py * s + cx[:, None], px * s + py * c + cy[:, None]], -1)
    mix = rng.dirichlet([3.0, 4.0, 1.2, 0.4, 1.0], size=n).astype(np.float32)
    colors = mix @ _LEAF_KINDS * (brightness * rng.uniform(0.85, 1.15, n))[:, None]
    return _Leaves(
        polys=np.round(polys).astype(np.int32),
        colors=np.clip(colors, 0, 1).astype(np.float32),
        lengths=np.asarray(length, np.float64),
        depth=np.asarray(depth, np.float64),
    )


@dataclass
class _LeafPaint:
    """Leaves converted once to the values cv2 wants: per-leaf numpy calls would dominate."""

    polys: np.ndarray
    fill: list
    dark: list
    light: list
    ribs: list  # per leaf >= 10 px: midrib (+ veins) as int32 segments for one polylines call
    lengths: list

    @staticmethod
    def of(leaves: _Leaves) -> _LeafPaint:
        cols = leaves.colors
        polys = leaves.polys
        n = polys.shape[1] // 2
        tip, stalk = polys[:, 0].astype(np.float64), polys[:, n].astype(np.float64)
        segments = [np.stack([tip, stalk], 1)]
        for j in range(2, n - 1, 2):  # veins from the midrib halfway to either edge
            base = tip + (stalk - tip) * (j + 1) / n
            for side in (polys[:, j], polys[:, 2 * n - 1 - j]):
                segments.append(np.stack([base, (base + side) / 2], 1))
        seg = np.round(np.stack(segments, 1)).astype(np.int32)  # (N, 1 + veins, 2, 2)
        lengths = leaves.lengths.tolist()
        ribs = [
            (list(seg[k]) if length >= 30 else [seg[k, 0]]) if length >= 10 else None
            for k, length in enumerate(lengths)
        ]
        return _LeafPaint(
            polys=polys,
            fill=cols.tolist(),
            dark=(cols * 0.8).tolist(),
            light=np.clip(cols * 1.15 + 0.03, 0, 1).tolist(),
            ribs=ribs,
            lengths=lengths,
        )


def _draw_leaves(
    canvas: np.ndarray, label: np.ndarray | None, paint: _LeafPaint, indices: list[int]
) -> None:
    """Fill leaves in the given order (two-tone with a midrib, veins when large).

    Labels under each leaf are cleared: it hides the apples drawn before it.
    """
    polys = paint.polys
    half = polys.shape[1] // 2 + 1
    for k in indices:
        pts = polys[k]
        cv2.fillPoly(canvas, [pts], paint.fill[k])
        if paint.lengths[k] >= 10:
            # One half a little darker: the leaf is folded along its midrib.
            cv2.fillPoly(canvas, [pts[:half]], paint.dark[k])
            cv2.polylines(canvas, paint.ribs[k], False, paint.light[k], 1)
        if label is not None:
            cv2.fillPoly(label, [pts], 0)


def _grass(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Grass texture: short vertical strokes (anisotropic noise) over patchy greens."""
    rows = max(2, int(height / (18 * scale)))
    cols = min(width, max(2, int(width / (3 * scale))))
    strokes = cv2.resize(
        rng.random((rows, cols), dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )
    patches = smooth_noise(rng, height, width, max(height, width) / 10, 2)
    t = np.clip(0.6 * strokes + 0.6 * patches - 0.1, 0, 1)[..., None]
    dark = np.array([0.16, 0.25, 0.07], np.float32)
    light = np.array([0.48, 0.56, 0.22], np.float32)
    return dark * (1 - t) + light * t


def _background(
    rng: np.random.Generator, height: int, width: int, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sky, far canopy, far leaves, optional grass and trunks, then depth blur.

    Returns the float32 canvas and the sky opacity map (where foliage should thin out).
    """
    side = max(height, width)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    if rng.random() < 0.4:  # overcast
        sky_top = np.array([0.86, 0.88, 0.90], np.float32) * rng.uniform(0.9, 1.05)
    else:
        sky_top = np.array([0.55, 0.70, 0.90], np.float32) * rng.uniform(0.9, 1.05)
    sky_low = np.array([0.88, 0.91, 0.94], np.float32)
    sky = np.broadcast_to(sky_top * (1 - y[..., None]) + sky_low * y[..., None], (height, width, 3))

    n1 = smooth_noise(rng, height, width, side / 6, octaves=4)
    n2 = smooth_noise(rng, height, width, side / 20, octaves=3)
    dark = np.array([0.05, 0.10, 0.04], np.float32) * rng.uniform(0.8, 1.2)
    mid = np.array([0.18, 0.30, 0.09], np.float32) * rng.uniform(0.8, 1.2)
    lit = np.array([0.42, 0.52, 0.18], np.float32) * rng.uniform(0.85, 1.1)
    t1 = np.clip((n1 - 0.3) * 2.5, 0, 1)[..., None]
    canopy = dark * (1 - t1) + mid * t1
    sun = np.clip((n2 - 0.58) * 5.0, 0, 1)[..., None] * rng.uniform(0.3, 0.8)
    canopy = canopy * (1 - sun) + lit * sun
    canopy = canopy * (1 - np.clip((0.4 - n2) * 6.0, 0, 1)[..., None] * 0.6)

    # Sky shows through where the canopy noise is low, mostly near the top.
    sky_amount = 0.0 if rng.random() < 0.3 else rng.uniform(0.03, 0.25)
    sky_alpha = np.zeros((height, width), np.float32)
    if sky_amount > 0:
        z = (n1 - n1.mean()) / (n1.std() + 1e-6)
        frac = np.clip(sky_amount * 2.5 * (1.0 - y) ** 2.5, 1e-4, 0.95)
        sky_alpha = np.clip((ndtri(frac).astype(np.float32) - z) / 0.15, 0, 1)
    canvas = canopy * (1 - sky_alpha[..., None]) + sky * sky_alpha[..., None]
    canvas = np.ascontiguousarray(canvas, dtype=np.float32)

    for _ in range(int(rng.integers(0, 3))):  # trunks of the row behind
        x = rng.uniform(0, width)
        w = rng.uniform(15, 45) * scale
        top_y = rng.uniform(0.2, 0.6) * height
        top_x = x + rng.uniform(-0.1, 0.1) * width
        pts = np.array(
            [
                [x - w / 2, height],
                [x + w / 2, height],
                [top_x + w / 4, top_y],
                [top_x - w / 4, top_y],
            ]
        )
        bark = tuple(float(c) for c in np.array([0.20, 0.17, 0.13]) * rng.uniform(0.7, 1.2))
        cv2.fillPoly(canvas, [pts.round().astype(np.int32)], bark)

    if rng.random() < 0.35:  # grass at the bottom
        edge = rng.uniform(0.8, 0.95) * height
        edge = edge + (smooth_noise(rng, 1, width, side / 8, 2)[0] - 0.5) * 0.08 * height
        ground = np.arange(height, dtype=np.float32)[:, None] > edge[None, :]
        canvas = np.where(ground[..., None], _grass(rng, height, width, scale), canvas)
        canvas = canvas.astype(np.float32)

    # Far leaves, tinted like the canopy behind them; few against the sky.
    n_far = int(rng.integers(400, 700))
    fx, fy = rng.uniform(0, width, n_far), rng.uniform(0, height, n_far)
    ix, iy = fx.astype(int), fy.astype(int)
    keep = (sky_alpha[iy, ix] < 0.3) | (rng.random(n_far) < 0.05)
    far = _leaf_batch(
        rng, fx, fy, rng.uniform(14, 30, n_far) * scale, np.zeros(n_far), np.ones(n_far)
    )
    tint = canopy[iy, ix] * rng.uniform(0.6, 1.5, (n_far, 1)).astype(np.float32)
    far.colors = 0.5 * far.colors + 0.5 * tint
    far.lengths[:] = 0.0  # plain silhouettes: they get blurred anyway
    _draw_leaves(canvas, None, _LeafPaint.of(far), np.flatnonzero(keep).tolist())
    canvas = cv2.GaussianBlur(canvas, (0, 0), max(0.7, 1.8 * scale))
    return canvas, sky_alpha


def _draw_branches(rng: np.random.Generator, canvas: np.ndarray, scale: float) -> np.ndarray:
    """Curved brown branches (random walks); returns points on them (inside the image)."""
    height, width = canvas.shape[:2]
    anchors = []
    for _ in range(int(rng.integers(2, 6))):
        side = rng.integers(3)
        if side == 0:
            p = np.array([0.0, rng.uniform(0.1, 0.9) * height])
            heading = rng.uniform(-0.5, 0.3)
        elif side == 1:
            p = np.array([float(width), rng.uniform(0.1, 0.9) * height])
            heading = np.pi + rng.uniform(-0.3, 0.5)
        else:
            p = np.array([rng.uniform(0.1, 0.9) * width, float(height)])
            heading = -np.pi / 2 + rng.uniform(-0.7, 0.7)
        steps = int(rng.integers(8, 22))
        turns = np.cumsum(rng.normal(0, 0.25, steps)) + heading
        step = max(width, height) / 24
        pts = p + np.cumsum(step * np.stack([np.cos(turns), np.sin(turns)], 1), 0)
        pts = np.concatenate([p[None], pts])
        thick = rng.uniform(6, 18) * scale
        poly = pts.round().astype(np.int32)
        bark = np.array([0.26, 0.20, 0.14], np.float32) * rng.uniform(0.75, 1.2)
        cv2.polylines(
            canvas, [poly], False, tuple(float(c) for c in bark * 0.6), max(1, round(thick))
        )
        if thick >= 3:
            hl = poly + np.array([0, -max(1, round(thick / 5))], np.int32)
            cv2.polylines(
                canvas, [hl], False, tuple(float(c) for c in bark * 1.2), max(1, round(thick / 3))
            )
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < width) & (pts[:, 1] >= 0) & (pts[:, 1] < height)
        anchors.append(pts[inside])
    out = np.concatenate(anchors)
    return out if len(out) else np.array([[width / 2, height / 2]])


def _place_apples(
    rng: np.random.Generator, height: int, width: int, scale: float, anchors: np.ndarray
) -> list[_Apple]:
    """Apple positions, sizes, depths and attributes; most hang in clusters below branches."""
    n = int(np.clip(round(rng.lognormal(np.log(45), 0.5)), 5, 123))
    n_fg = int(rng.choice([0, 1, 2, 3], p=[0.3, 0.35, 0.25, 0.1]))
    variety = COLORS[int(rng.choice(3, p=[0.55, 0.2, 0.25]))]
    p_ripe = float(rng.choice([0.9, 0.6, 0.2], p=[0.55, 0.3, 0.15]))
    p_damaged = rng.uniform(0.05, 0.25)

    # Radii at the MinneApple scale: median ~17 px; after occlusion the median visible area is
    # close to MinneApple's ~500-600 px at 720x1280.
    radii = np.clip(rng.lognormal(np.log(17.0), 0.35, n), 8.0, 50.0)
    radii = np.concatenate([radii, rng.uniform(45.0, 120.0, n_fg)])
    total = n + n_fg

    n_clusters = int(rng.integers(3, 12))
    centres = anchors[rng.integers(len(anchors), size=n_clusters)]
    centres = centres + np.array([0.0, 1.0]) * rng.uniform(0, 30, (n_clusters, 1)) * scale
    clustered = rng.random(total) < 0.65
    which = rng.integers(n_clusters, size=total)
    spread = rng.normal(0.0, 1.0, (total, 2)) * rng.uniform(25, 50) * scale
    uniform = rng.uniform(0.0, 1.0, (total, 2)) * np.array([width, height])
    pos = np.where(clustered[:, None], centres[which] + spread, uniform)
    pos[n:] = uniform[n:] * 0.8 + np.array([width, height]) * 0.1  # foreground: not at the rim

    # Bigger apples are nearer: depth 0.35..0.95, foreground ones just below the front leaves.
    log_r = (np.log(radii) - np.log(8.0)) / (np.log(50.0) - np.log(8.0))
    depth = np.clip(0.35 + 0.6 * log_r + rng.normal(0, 0.08, total), 0.3, 0.95)
    depth[n:] = rng.uniform(0.96, 0.99, n_fg)
    apples = []
    for i in range(total):
        r = max(1.8, radii[i] * scale)
        attrs = _sample_attributes(rng, variety, p_ripe, p_damaged, r)
        if attrs["ripeness"] == "unripe":
            r = max(1.8, r * _UNRIPE_SIZE)
        apples.append(_Apple(float(pos[i, 0]), float(pos[i, 1]), float(r), float(depth[i]), attrs))
    return apples


def _clumps(
    rng: np.random.Generator,
    centres: np.ndarray,
    leaves_per_clump: float,
    radius: tuple[float, float],
    length: tuple[float, float],
    depth: tuple[float, float],
    brightness: tuple[float, float],
    light: np.ndarray,
) -> _Leaves:
    """Leaves radiating from twig centres; the side facing the light is brighter."""
    counts = rng.poisson(leaves_per_clump, len(centres))
    n = int(counts.sum())
    owner = np.repeat(np.arange(len(centres)), counts)
    rad = np.repeat(rng.uniform(*radius, len(centres)), counts)
    off = rng.normal(0.0, 0.5, (n, 2)) * rad[:, None]
    angle = np.arctan2(off[:, 1], off[:, 0]) + rng.normal(0, 0.5, n)
    lit = np.clip((off @ light[:2]) / (rad * np.linalg.norm(light[:2])), -1, 1)
    bright = rng.uniform(*brightness, n) * (1.0 + 0.3 * lit)
    return _leaf_batch(
        rng,
        centres[owner, 0] + off[:, 0],
        centres[owner, 1] + off[:, 1],
        rng.uniform(*length, n),
        rng.uniform(*depth, n),
        bright,
        angle,
    )


def _place_leaves(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: float,
    apples: list[_Apple],
    anchors: np.ndarray,
    sky_alpha: np.ndarray,
    light: np.ndarray,
) -> _Leaves:
    """Dense clumps behind the apples, sparser ones among them, leaves hugging apples, and
    a few big near leaves; foliage thins out where the background shows sky."""

    def centres(k: int, on_branch: float) -> np.ndarray:
        cand = rng.uniform(0, 1, (4 * k, 2)) * np.array([width, height])
        sky = sky_alpha[cand[:, 1].astype(int), cand[:, 0].astype(int)]
        cand = cand[(sky < 0.5) | (rng.random(4 * k) < 0.1)][:k]
        n_b = int(on_branch * k)
        return np.concatenate([cand, anchors[rng.integers(len(anchors), size=n_b)]])

    s = scale
    parts = [
        _clumps(
            rng,
            centres(int(rng.integers(45, 80)), 0.3),
            24.0,
            (40 * s, 110 * s),
            (28 * s, 55 * s),
            (0.0, 0.34),
            (0.55, 0.8),
            light,
        ),
        _clumps(
            rng,
            centres(int(rng.integers(8, 20)), 0.3),
            9.0,
            (40 * s, 90 * s),
            (30 * s, 60 * s),
            (0.35, 0.95),
            (0.75, 1.0),
            light,
        ),
    ]
    hug = [a for a in apples for _ in range(int(rng.choice([0, 0, 1, 1, 2])))]
    if hug:
        ang = rng.uniform(0, 2 * np.pi, len(hug))
        r = np.array([a.r for a in hug])
        dist = r * rng.uniform(0.7, 1.5, len(hug))
        parts.append(
            _leaf_batch(
                rng,
                np.array([a.cx for a in hug]) + dist * np.cos(ang),
                np.array([a.cy for a in hug]) + dist * np.sin(ang),
                r * rng.uniform(2.0, 3.2, len(hug)),
                np.array([a.depth for a in hug]) + 1e-3,
                rng.uniform(0.75, 1.05, len(hug)),
            )
        )
    n_front = int(rng.integers(0, 8))
    parts.append(
        _leaf_batch(
            rng,
            rng.uniform(0, width, n_front),
            rng.uniform(0, height, n_front),
            rng.uniform(80, 200, n_front) * s,
            1.0 + rng.uniform(0.0, 0.1, n_front),
            rng.uniform(0.85, 1.1, n_front),
        )
    )
    return _Leaves.concat(parts)


# ----------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrchardImage:
    """One rendered orchard frame: RGB, instance ids, per-instance attributes and negatives."""

    image_id: str
    image: np.ndarray  # uint8 (H, W, 3)
    label_map: np.ndarray  # uint16 (H, W): 0 background, 1..N visible apple instances
    attributes: list[dict[str, str]]  # attributes[k - 1] belongs to instance id k
    negative_phrases: list[str]

    @property
    def noun_phrases(self) -> list[str]:
        return [apple_phrase(a) for a in self.attributes]


def image_stem(index: int) -> str:
    """File stem (and ``image_id``) of image ``index``."""
    return f"orchard_{index:05d}"


def _check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in image_size)
    if height < 16 or width < 16:
        raise ValueError(f"image_size must be at least 16x16 pixels, got {tuple(image_size)!r}")
    return height, width


def render_orchard_image(
    seed: int, index: int, image_size: tuple[int, int] = (256, 256), zoom: float = 1.0
) -> OrchardImage:
    """Render image ``index`` of the orchard with ``seed`` at ``image_size`` = (H, W).

    The result depends only on these values; ids are in back-to-front draw order. ``zoom`` > 1
    is a close-up: a scene ``zoom`` times larger is rendered at the MinneApple scale and its
    centre cropped, so apples are ``zoom`` times larger relative to the frame (and fewer).
    CPU demos need this: a tiny model at 256 px predicts 64x64 masks, where a MinneApple-scale
    apple would be a pixel or two.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    if zoom < 1.0:
        raise ValueError(f"zoom must be >= 1, got {zoom}")
    if zoom > 1.0:
        h, w = _check_size(image_size)
        big = render_orchard_image(seed, index, (round(h * zoom), round(w * zoom)))
        return _crop_centre(big, h, w)
    height, width = _check_size(image_size)
    rng = np.random.default_rng([int(seed), 1, int(index)])
    scale = float(np.sqrt(height * width) / _REFERENCE_SIDE)
    az = rng.uniform(-0.85 * np.pi, -0.15 * np.pi)  # light from above, left or right
    light = np.array([0.65 * np.cos(az), 0.65 * np.sin(az), np.sqrt(1 - 0.65**2)], np.float32)

    canvas, sky_alpha = _background(rng, height, width, scale)
    label = np.zeros((height, width), np.uint16)
    anchors = _draw_branches(rng, canvas, scale)
    apples = sorted(_place_apples(rng, height, width, scale, anchors), key=lambda a: a.depth)
    leaves = _place_leaves(rng, height, width, scale, apples, anchors, sky_alpha, light)

    # Painter's algorithm over apples and leaves by depth (apples first on ties).
    order = sorted(
        [(a.depth, 0, i) for i, a in enumerate(apples)]
        + [(float(d), 1, j) for j, d in enumerate(leaves.depth)]
    )
    paint = _LeafPaint.of(leaves)
    run: list[int] = []
    any_apple = False
    for _, kind, j in order:
        if kind == 1:
            run.append(j)
            continue
        _draw_leaves(canvas, label if any_apple else None, paint, run)
        run = []
        _draw_apple(canvas, label, apples[j], j + 1, light, rng)
        any_apple = True
    _draw_leaves(canvas, label if any_apple else None, paint, run)

    # Camera: exposure, white balance, slight defocus, sensor noise.
    canvas *= rng.uniform(0.85, 1.15) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    canvas = cv2.GaussianBlur(canvas, (0, 0), max(0.45, 0.9 * scale))
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(0.012)
    rgb = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    counts = np.bincount(label.ravel(), minlength=len(apples) + 1)
    keep = [k for k in range(1, len(apples) + 1) if counts[k] >= MIN_VISIBLE_AREA]
    lut = np.zeros(len(apples) + 1, np.uint16)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.uint16)
    return OrchardImage(
        image_id=image_stem(index),
        image=rgb,
        label_map=lut[label],
        attributes=[dict(apples[k - 1].attributes) for k in keep],
        negative_phrases=_negative_phrases([a.attributes for a in apples], rng),
    )


def _crop_centre(big: OrchardImage, height: int, width: int) -> OrchardImage:
    """The centre ``height`` x ``width`` of a frame, instances renumbered, tiny rests dropped."""
    y0 = (big.image.shape[0] - height) // 2
    x0 = (big.image.shape[1] - width) // 2
    label = big.label_map[y0 : y0 + height, x0 : x0 + width]
    counts = np.bincount(label.ravel(), minlength=len(big.attributes) + 1)
    keep = [k for k in range(1, len(big.attributes) + 1) if counts[k] >= MIN_VISIBLE_AREA]
    lut = np.zeros(len(big.attributes) + 1, np.uint16)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.uint16)
    present = {apple_phrase(big.attributes[k - 1]) for k in keep}
    return OrchardImage(
        image_id=big.image_id,
        image=np.ascontiguousarray(big.image[y0 : y0 + height, x0 : x0 + width]),
        label_map=lut[label],
        attributes=[dict(big.attributes[k - 1]) for k in keep],
        # phrases absent from the whole frame are absent from its centre too
        negative_phrases=[p for p in big.negative_phrases if p not in present],
    )


def _objects(sample: OrchardImage) -> list[dict[str, Any]]:
    """Schema objects of a rendered image, in instance-id order."""
    rles = rle.encode_instances(sample.label_map, list(range(1, len(sample.attributes) + 1)))
    areas = rle.area(rles)
    boxes = rle.to_bbox(rles)
    return [
        make_object(
            segmentation=r,
            bbox=boxes[k].tolist(),
            area=float(areas[k]),
            category=CATEGORY,
            noun_phrase=apple_phrase(attrs),
            attributes=attrs,
        )
        for k, (r, attrs) in enumerate(zip(rles, sample.attributes))
    ]


def iter_orchard_rows(
    num_images: int, seed: int, image_size: tuple[int, int] = (256, 256)
) -> Iterator[dict[str, Any]]:
    """Yield orchard images as schema rows (``FEATURES``), PNG bytes inline, no files.

    Row ``i`` holds the very image (same PNG bytes) that :func:`make_synthetic_orchard`
    writes as ``orchard_{i:05d}.png`` for the same seed and size.
    """
    for index in range(int(num_images)):
        sample = render_orchard_image(seed, index, image_size)
        yield _row(sample, encode_png(sample.image))


def _row(sample: OrchardImage, png: bytes) -> dict[str, Any]:
    height, width = sample.label_map.shape
    return {
        "image": {"bytes": png, "path": None},
        "image_id": sample.image_id,
        "width": int(width),
        "height": int(height),
        "objects": _objects(sample),
        "negative_phrases": list(sample.negative_phrases),
    }


def _orchard_rows_generator(
    num_images: int, seed: int, height: int, width: int, version: str
) -> Iterator[dict[str, Any]]:
    # Top-level (not a closure) so datasets can hash it; ``version`` keys the Arrow cache.
    del version
    yield from iter_orchard_rows(num_images, seed, (height, width))


def make_orchard_dataset(
    num_images: int,
    seed: int,
    image_size: tuple[int, int] = (256, 256),
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """The orchard as a ``datasets.Dataset`` with ``FEATURES`` (all images, no split), cached
    as Arrow: a second call with the same arguments loads instead of drawing again."""
    return datasets.Dataset.from_generator(
        _orchard_rows_generator,
        features=FEATURES,
        cache_dir=cache_dir,
        gen_kwargs={
            "num_images": int(num_images),
            "seed": int(seed),
            "height": int(image_size[0]),
            "width": int(image_size[1]),
            "version": GENERATOR_VERSION,
        },
    )


# ----------------------------------------------------------------------------------------
# Files: MinneApple layout + COCO-text
# ----------------------------------------------------------------------------------------


def split_indices(num_images: int, seed: int, test_fraction: float) -> tuple[list[int], list[int]]:
    """Seeded train/test split of image indices (sorted lists).

    ``round(num_images * test_fraction)`` test images, at least one in each split when there
    are two or more images and the fraction is strictly between 0 and 1.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = int(round(num_images * test_fraction))
    if test_fraction > 0 and num_images >= 2:
        n_test = min(max(n_test, 1), num_images - 1)
    perm = np.random.default_rng([int(seed), 2]).permutation(num_images)
    test = sorted(int(i) for i in perm[:n_test])
    test_set = set(test)
    return [i for i in range(num_images) if i not in test_set], test


def make_synthetic_orchard(
    out_dir: str | os.PathLike,
    num_images: int,
    seed: int,
    image_size: tuple[int, int] = (256, 256),
    test_fraction: float = 0.25,
    *,
    overwrite: bool = False,
    zoom: float = 1.0,
) -> dict[str, Any]:
    """Write the synthetic orchard twice: MinneApple layout and COCO-text; return a summary.

    Layout::

        out_dir/minneapple/{train,test}/images/<stem>.png   RGB
        out_dir/minneapple/{train,test}/masks/<stem>.png    0 bg, 1..N ids (8-bit; 16-bit > 255)
        out_dir/coco_text/images/<stem>.png                 the same PNG bytes
        out_dir/coco_text/annotations/{train,val}.json      val = the MinneApple test images

    COCO annotations of an image follow its instance ids (annotation k <-> mask id k) and
    carry ``noun_phrase`` and ``attributes``; ``images[]`` entries carry ``negative_phrases``.
    Each folder is built in a temporary folder beside it and renamed into place at the end
    (:func:`sam_hf.data.output.atomic_output`), so a failure leaves no partial data set.
    Existing ``minneapple``/``coco_text`` folders are an error unless ``overwrite``, which
    replaces only files with the names this function writes (:data:`SYNTHETIC_FILES`); other
    files there are kept and named in a note. No ``.sam_hf_output.json`` marker is written:
    the same seed gives byte-identical trees, file list included.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    height, width = _check_size(image_size)
    train_idx, test_idx = split_indices(num_images, seed, test_fraction)
    out = Path(out_dir)
    targets = [out / "minneapple", out / "coco_text"]
    for p in targets:
        clean_leftovers(p)
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; pass --overwrite (overwrite=True) to replace what"
            " make_synthetic_orchard wrote there (other files are kept), or choose another --out"
        )
    _remove_legacy_tmp(out)

    def folder(name: str) -> AbstractContextManager[Path]:
        return atomic_output(
            out / name,
            SYNTHETIC_COMMAND,
            overwrite=overwrite,
            owned=SYNTHETIC_FILES[name].fullmatch,
            marker=False,
        )

    with folder("minneapple") as mtmp, folder("coco_text") as ctmp:
        summary = _write_all(
            mtmp, ctmp, num_images, seed, (height, width), train_idx, test_idx, zoom
        )
    summary["out_dir"] = str(out)
    return summary


#: Names the writer in notes and refusals.
SYNTHETIC_COMMAND = "make_synthetic_orchard"

#: The files :func:`make_synthetic_orchard` writes, per folder (``--overwrite`` replaces or
#: deletes only these; anything else in the folders is kept).
SYNTHETIC_FILES = {
    "minneapple": re.compile(r"(train|test)/(images|masks)/orchard_\d{5,}\.png"),
    "coco_text": re.compile(r"images/orchard_\d{5,}\.png|annotations/(train|val)\.json"),
}


def _remove_legacy_tmp(out: Path) -> None:
    """Remove ``.synthetic-orchard-tmp-<pid>`` folders of killed runs of earlier versions."""
    if not out.is_dir():
        return
    for path in out.glob(".synthetic-orchard-tmp-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or pid_alive(int(pid))):
            continue  # still being written
        shutil.rmtree(path, ignore_errors=True)


def _write_all(
    mroot: Path,
    croot: Path,
    num_images: int,
    seed: int,
    image_size: tuple[int, int],
    train_idx: list[int],
    test_idx: list[int],
    zoom: float = 1.0,
) -> dict[str, Any]:
    """Write the MinneApple layout into ``mroot`` and the COCO-text one into ``croot``."""
    for split in ("train", "test"):
        for sub in ("images", "masks"):
            (mroot / split / sub).mkdir(parents=True)
    (croot / "images").mkdir(parents=True)
    (croot / "annotations").mkdir(parents=True)

    split_of = {i: "train" for i in train_idx} | {i: "test" for i in test_idx}
    coco: dict[str, dict[str, list]] = {
        s: {"images": [], "annotations": []} for s in ("train", "val")
    }
    attr_counts: dict[str, Counter] = {
        "color": Counter(),
        "ripeness": Counter(),
        "health": Counter(),
    }
    phrase_counts: Counter = Counter()
    instances = {"train": 0, "test": 0}
    ann_id = 1
    for index in range(num_images):
        sample = render_orchard_image(seed, index, image_size, zoom)
        split = split_of[index]
        stem = sample.image_id
        png = encode_png(sample.image)
        (mroot / split / "images" / f"{stem}.png").write_bytes(png)
        (mroot / split / "masks" / f"{stem}.png").write_bytes(mask_png(sample.label_map))
        (croot / "images" / f"{stem}.png").write_bytes(png)

        entry = coco["train" if split == "train" else "val"]
        image_id = index + 1
        entry["images"].append(
            {
                "id": image_id,
                "file_name": f"{stem}.png",
                "width": image_size[1],
                "height": image_size[0],
                "negative_phrases": list(sample.negative_phrases),
            }
        )
        for obj in _objects(sample):
            attrs = dict(zip(obj["attributes"]["keys"], obj["attributes"]["values"]))
            entry["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": obj["segmentation"],
                    "area": obj["area"],
                    "bbox": obj["bbox"],
                    "iscrowd": 0,
                    "noun_phrase": obj["noun_phrase"],
                    "attributes": attrs,
                }
            )
            ann_id += 1
            for key, value in attrs.items():
                attr_counts[key][value] += 1
            phrase_counts[obj["noun_phrase"]] += 1
        instances[split] += len(sample.attributes)

    for name, data in coco.items():
        doc = {
            "info": {
                "description": "sam_hf synthetic orchard",
                "version": GENERATOR_VERSION,
                "seed": int(seed),
                "split": name,
            },
            "licenses": [],
            "categories": [{"id": 1, "name": CATEGORY}],
            "images": data["images"],
            "annotations": data["annotations"],
        }
        path = croot / "annotations" / f"{name}.json"
        path.write_text(json.dumps(doc), encoding="utf-8")

    values = {"color": COLORS, "ripeness": RIPENESS, "health": HEALTH}
    return {
        "seed": int(seed),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "zoom": float(zoom),
        "images": {"train": len(train_idx), "test": len(test_idx), "total": num_images},
        "instances": {**instances, "total": instances["train"] + instances["test"]},
        "attributes": {k: {v: int(attr_counts[k][v]) for v in values[k]} for k in values},
        "noun_phrases": {p: int(c) for p, c in sorted(phrase_counts.items())},
    }
