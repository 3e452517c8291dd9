"""Apples of the synthetic orchard: attributes, phrases, placement and shading.

Each apple carries ``{"color", "ripeness", "health"}`` drawn with orchard-like correlations
(one variety and one maturity stage per image, unripe apples mostly green) and is drawn as a
shaded sphere with outline wobble, a highlight, a stem cavity, colour blush and streaks,
damage (a bruise or scab spots) and a stem. Every random draw comes from the image's own
generator in a fixed order (:mod:`sam_hf.data.synthetic.orchard` relies on it for
byte-identical images), so parameters are drawn even for an apple that ends up off the canvas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

#: Attribute values, in the canonical order used for phrases and summaries.
COLORS: tuple[str, ...] = ("red", "green", "yellow")
RIPENESS: tuple[str, ...] = ("ripe", "unripe")
HEALTH: tuple[str, ...] = ("healthy", "damaged")
#: Fruit that never appears in the orchard: plain-noun negatives for text grounding.
OTHER_OBJECTS: tuple[str, ...] = ("pear", "orange", "peach", "plum", "lemon", "tomato")
CATEGORY = "apple"


def apple_phrase(attributes: dict[str, str]) -> str:
    """Noun phrase of an apple: ``"{ripeness} {color} apple"``, ``"damaged "`` in front if so."""
    base = f"{attributes['ripeness']} {attributes['color']} {CATEGORY}"
    return f"damaged {base}" if attributes.get("health") == "damaged" else base


def negative_phrases(
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


def _clip_box(
    cx: float, cy: float, half: float, height: int, width: int
) -> tuple[int, int, int, int] | None:
    """Pixel box ``(x0, y0, x1, y1)`` (ends exclusive) of a square around (cx, cy), clipped to
    the canvas; None when nothing of it is on the canvas."""
    x0, x1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)) + 1, width)
    y0, y1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


@dataclass
class Apple:
    """One apple of a scene, in pixels of the frame."""

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


@dataclass
class _Look:
    """The random draws that shape and colour one apple."""

    tilt: float
    e2: float
    a3: float
    p3: float
    a5: float
    p5: float
    dimple: float
    primary: np.ndarray
    secondary: np.ndarray
    cover: float
    blush_dir: float
    freqs: np.ndarray
    phases: np.ndarray
    n_streaks: float
    ambient: float
    ks: float
    shininess: float
    damage_kind: str
    bruise_c: np.ndarray
    bruise_r: float
    spots: np.ndarray
    spot_r: np.ndarray
    stem_side: float
    has_stem: bool
    streaks: bool


def _draw_look(apple: Apple, light: np.ndarray, rng: np.random.Generator) -> _Look:
    """Draw one apple's shape, colour and damage parameters (this order is the random stream)."""
    r = apple.r
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
    return _Look(
        tilt, e2, a3, p3, a5, p5, dimple, primary, secondary, cover, blush_dir, freqs, phases,
        n_streaks, ambient, ks, shininess, damage_kind, bruise_c, bruise_r, spots, spot_r,
        stem_side, has_stem, streaks,
    )  # fmt: skip


def draw_apple(
    canvas: np.ndarray,
    label: np.ndarray,
    apple: Apple,
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
    look = _draw_look(apple, light, rng)
    if box is None:
        return
    x0, y0, x1, y1 = box
    # Apples under 5 px radius skip details no one could see (streaks, skin grain, cavity).
    detailed = r >= 5
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(apple.cx)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(apple.cy)
    ct, st = np.cos(look.tilt), np.sin(look.tilt)
    u = (dx * ct + dy * st) / r  # apple frame, v points from stem (top) to calyx
    v = (-dx * st + dy * ct) / r
    rho = np.hypot(u, v)
    outline = _outline(look, np.arctan2(v, u), detailed)
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
    normal = (dx * inv, dy * inv, np.sqrt(np.clip(1.0 - q**2, 0.0, 1.0)))
    albedo = _albedo(look, u, v, outline, normal[2], detailed, rng)
    albedo, matte = _damage(look, albedo, u, v, apple.attributes["health"] == "damaged")
    color = _shade(look, albedo, matte, normal, light)
    patch[:] = patch * (1.0 - alpha) + color * alpha
    label[y0:y1, x0:x1][body] = inst_id
    if look.has_stem:
        _draw_stem(patch, label[y0:y1, x0:x1], body, apple, look, (x0, y0))


def _outline(look: _Look, phi: np.ndarray, detailed: bool) -> np.ndarray:
    """Radius of the outline (1 = the apple's radius) at angle ``phi`` of the apple frame."""
    outline = 1.0 + look.e2 * np.cos(2 * phi)
    if detailed:
        top = np.mod(phi + 1.5 * np.pi, 2 * np.pi) - np.pi  # signed angle from the stem direction
        outline = (
            outline
            + look.a3 * np.cos(3 * phi + look.p3)
            + look.a5 * np.cos(5 * phi + look.p5)
            - look.dimple * np.exp(-((top / 0.32) ** 2))
        )
    return outline


def _albedo(
    look: _Look,
    u: np.ndarray,
    v: np.ndarray,
    outline: np.ndarray,
    nz: np.ndarray,
    detailed: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """Skin colour: blush between primary and secondary colour, streaks, grain and cavity."""
    proj = u * np.cos(look.blush_dir) + v * np.sin(look.blush_dir)
    if detailed:
        wobble = sum(
            np.sin(look.freqs[k, 0] * u + look.freqs[k, 1] * v + look.phases[k]) for k in range(3)
        ) / np.float32(3)
        proj = proj + 0.35 * wobble
    mix = np.clip((proj + (look.cover - 0.5) * 2.4) / 0.5 + 0.5, 0.0, 1.0)
    if look.streaks and detailed:
        # Streaks follow meridians (stem to calyx): stripes in longitude seen from the side.
        lon = np.arctan2(u / outline, nz + 1e-3)
        stripes = np.sin(look.n_streaks * lon + 2.0 * wobble)
        mix = np.clip(mix + 0.35 * stripes * mix * (1 - mix) * 4, 0, 1)
    albedo = look.primary * mix[..., None] + look.secondary * (1.0 - mix[..., None])
    if detailed:
        grain = 1.0 + 0.05 * rng.standard_normal(u.shape, dtype=np.float32)
        cavity = np.exp(-((u**2 + (v + 0.8) ** 2) / (2 * 0.14**2)))
        albedo *= (grain * (1.0 - 0.45 * cavity))[..., None]
    return albedo


def _damage(
    look: _Look, albedo: np.ndarray, u: np.ndarray, v: np.ndarray, damaged: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A bruise or scab spots painted over the albedo, and where the skin is matte (0..1)."""
    matte = np.float32(0.0)
    if damaged:
        if look.damage_kind == "bruise":
            d = np.hypot(u - look.bruise_c[0], v - look.bruise_c[1]) / look.bruise_r
            b = np.clip((1.0 - d) * 3.0, 0.0, 1.0) * 0.9
            albedo = albedo * (1 - b[..., None]) + _BRUISE * b[..., None]
        else:
            b = np.zeros_like(u)
            for (su, sv), sr in zip(look.spots, look.spot_r):
                b = np.maximum(b, np.clip((1.0 - np.hypot(u - su, v - sv) / sr) * 4.0, 0.0, 1.0))
            albedo = albedo * (1 - b[..., None]) + _SCAB * b[..., None]
        matte = b
    return albedo, matte


def _shade(
    look: _Look,
    albedo: np.ndarray,
    matte: np.ndarray,
    normal: tuple[np.ndarray, np.ndarray, np.ndarray],
    light: np.ndarray,
) -> np.ndarray:
    """Lambert + ambient on the sphere normal and a Blinn highlight (none on matte skin)."""
    nx, ny, nz = normal
    diffuse = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0)
    half = light + np.array([0.0, 0.0, 1.0], np.float32)
    half /= np.linalg.norm(half)
    spec = look.ks * np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0.0, 1.0) ** look.shininess
    spec *= 1.0 - matte
    return albedo * (look.ambient + (1.0 - look.ambient) * diffuse)[..., None] + spec[
        ..., None
    ] * np.float32(0.95)


def _draw_stem(
    patch: np.ndarray,
    label: np.ndarray,
    body: np.ndarray,
    apple: Apple,
    look: _Look,
    origin: tuple[int, int],
) -> None:
    """The stem, over the apple's patch; it hides what lies behind it outside the apple."""
    x0, y0 = origin
    r = apple.r
    ct, st = np.cos(look.tilt), np.sin(look.tilt)
    top_uv = np.array([0.0, -0.78])
    end_uv = np.array([look.stem_side, -1.3])

    def to_img(p: np.ndarray) -> tuple[int, int]:
        return (
            int(round(apple.cx + r * (p[0] * ct - p[1] * st))) - x0,
            int(round(apple.cy + r * (p[0] * st + p[1] * ct))) - y0,
        )

    stem = np.zeros(body.shape, np.uint8)
    cv2.line(stem, to_img(top_uv), to_img(end_uv), 1, max(1, int(round(r / 9))))
    stem = stem.astype(bool)
    patch[stem] = _STEM
    label[stem & ~body] = 0


def place_apples(
    rng: np.random.Generator, height: int, width: int, scale: float, anchors: np.ndarray
) -> list[Apple]:
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
        apples.append(Apple(float(pos[i, 0]), float(pos[i, 1]), float(r), float(depth[i]), attrs))
    return apples
