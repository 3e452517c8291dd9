"""Foliage and background of the synthetic orchard: sky, canopy, trunks, branches, leaves.

The scene behind and around the apples of :mod:`sam_hf.data.synthetic.orchard_apples`: a sky
gradient showing through a noise canopy, trunks and grass, depth-blurred far leaves, curved
branches (the anchors apples hang from) and clumps of near leaves that hide parts of the
apples. Leaves are built in vectorised batches and drawn with OpenCV, which keeps a 720x1280
frame fast. Every random draw comes from the image's generator, in a fixed order.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.special import ndtri

from sam_hf.data.synthetic.drawing import smooth_noise
from sam_hf.data.synthetic.orchard_apples import Apple


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
class LeafPaint:
    """Leaves converted once to the values cv2 wants: per-leaf numpy calls would dominate."""

    polys: np.ndarray
    fill: list
    dark: list
    light: list
    ribs: list  # per leaf >= 10 px: midrib (+ veins) as int32 segments for one polylines call
    lengths: list

    @staticmethod
    def of(leaves: _Leaves) -> LeafPaint:
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
        return LeafPaint(
            polys=polys,
            fill=cols.tolist(),
            dark=(cols * 0.8).tolist(),
            light=np.clip(cols * 1.15 + 0.03, 0, 1).tolist(),
            ribs=ribs,
            lengths=lengths,
        )


def draw_leaves(
    canvas: np.ndarray, label: np.ndarray | None, paint: LeafPaint, indices: list[int]
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


def background(
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
    draw_leaves(canvas, None, LeafPaint.of(far), np.flatnonzero(keep).tolist())
    canvas = cv2.GaussianBlur(canvas, (0, 0), max(0.7, 1.8 * scale))
    return canvas, sky_alpha


def draw_branches(rng: np.random.Generator, canvas: np.ndarray, scale: float) -> np.ndarray:
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


def place_leaves(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: float,
    apples: list[Apple],
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
