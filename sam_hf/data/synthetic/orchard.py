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

This module composes a frame and writes the data sets; the apples (attributes, phrases,
shading) are drawn by :mod:`sam_hf.data.synthetic.orchard_apples` and everything else in the
scene by :mod:`sam_hf.data.synthetic.orchard_foliage`.
"""

from __future__ import annotations

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

from sam_hf.data import rle
from sam_hf.data.leftovers import clean_leftovers, pid_alive
from sam_hf.data.output import OutputRules, atomic_output
from sam_hf.data.schema import make_object
from sam_hf.data.synthetic.drawing import cached_rows, encode_png, mask_png
from sam_hf.data.synthetic.orchard_apples import (
    CATEGORY,
    COLORS,
    HEALTH,
    RIPENESS,
    apple_phrase,
    draw_apple,
    negative_phrases,
    place_apples,
)
from sam_hf.data.synthetic.orchard_foliage import (
    LeafPaint,
    background,
    draw_branches,
    draw_leaves,
    place_leaves,
)

#: Instances with fewer visible pixels than this are dropped (too small to annotate).
MIN_VISIBLE_AREA = 8
#: Bumped whenever the drawing changes, so cached datasets built from older code are not reused.
GENERATOR_VERSION = "orchard-1"

# Geometric mean of a MinneApple frame side (sqrt(720 * 1280)); sizes below are given in
# pixels at that scale and multiplied by sqrt(H * W) / 960.
_REFERENCE_SIDE = 960.0


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

    canvas, sky_alpha = background(rng, height, width, scale)
    label = np.zeros((height, width), np.uint16)
    anchors = draw_branches(rng, canvas, scale)
    apples = sorted(place_apples(rng, height, width, scale, anchors), key=lambda a: a.depth)
    leaves = place_leaves(rng, height, width, scale, apples, anchors, sky_alpha, light)

    # Painter's algorithm over apples and leaves by depth (apples first on ties).
    order = sorted(
        [(a.depth, 0, i) for i, a in enumerate(apples)]
        + [(float(d), 1, j) for j, d in enumerate(leaves.depth)]
    )
    paint = LeafPaint.of(leaves)
    run: list[int] = []
    any_apple = False
    for _, kind, j in order:
        if kind == 1:
            run.append(j)
            continue
        draw_leaves(canvas, label if any_apple else None, paint, run)
        run = []
        draw_apple(canvas, label, apples[j], j + 1, light, rng)
        any_apple = True
    draw_leaves(canvas, label if any_apple else None, paint, run)

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
        negative_phrases=negative_phrases([a.attributes for a in apples], rng),
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
    return cached_rows(
        _orchard_rows_generator,
        num_images,
        seed,
        image_size,
        cache_dir,
        version=GENERATOR_VERSION,
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
        rules = OutputRules(
            SYNTHETIC_COMMAND,
            overwrite=overwrite,
            owned=SYNTHETIC_FILES[name].fullmatch,
            marker=False,
        )
        return atomic_output(out / name, rules)

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


@dataclass
class _Tally:
    """What :func:`_write_all` wrote so far: counts for the summary and the next annotation id."""

    attributes: dict[str, Counter] = field(
        default_factory=lambda: {"color": Counter(), "ripeness": Counter(), "health": Counter()}
    )
    phrases: Counter = field(default_factory=Counter)
    instances: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 0})
    next_ann_id: int = 1


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
    tally = _Tally()
    for index in range(num_images):
        sample = render_orchard_image(seed, index, image_size, zoom)
        split = split_of[index]
        stem = sample.image_id
        png = encode_png(sample.image)
        (mroot / split / "images" / f"{stem}.png").write_bytes(png)
        (mroot / split / "masks" / f"{stem}.png").write_bytes(mask_png(sample.label_map))
        (croot / "images" / f"{stem}.png").write_bytes(png)
        entry = coco["train" if split == "train" else "val"]
        _add_coco_image(entry, sample, index + 1, image_size, tally)
        tally.instances[split] += len(sample.attributes)

    for name, data in coco.items():
        _write_coco_json(croot / "annotations" / f"{name}.json", name, data, seed)

    values = {"color": COLORS, "ripeness": RIPENESS, "health": HEALTH}
    instances = tally.instances
    return {
        "seed": int(seed),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "zoom": float(zoom),
        "images": {"train": len(train_idx), "test": len(test_idx), "total": num_images},
        "instances": {**instances, "total": instances["train"] + instances["test"]},
        "attributes": {k: {v: int(tally.attributes[k][v]) for v in values[k]} for k in values},
        "noun_phrases": {p: int(c) for p, c in sorted(tally.phrases.items())},
    }


def _add_coco_image(
    entry: dict[str, list],
    sample: OrchardImage,
    image_id: int,
    image_size: tuple[int, int],
    tally: _Tally,
) -> None:
    """Append one image and its annotations (noun phrase and attributes) to a COCO split."""
    entry["images"].append(
        {
            "id": image_id,
            "file_name": f"{sample.image_id}.png",
            "width": image_size[1],
            "height": image_size[0],
            "negative_phrases": list(sample.negative_phrases),
        }
    )
    for obj in _objects(sample):
        attrs = dict(zip(obj["attributes"]["keys"], obj["attributes"]["values"]))
        entry["annotations"].append(
            {
                "id": tally.next_ann_id,
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
        tally.next_ann_id += 1
        for key, value in attrs.items():
            tally.attributes[key][value] += 1
        tally.phrases[obj["noun_phrase"]] += 1


def _write_coco_json(path: Path, name: str, data: dict[str, list], seed: int) -> None:
    """One COCO-text annotation file of the orchard."""
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
    path.write_text(json.dumps(doc), encoding="utf-8")
