"""The generic shapes as dataset rows and cached ``datasets.Dataset`` s, for both styles.

A style is named as ``synthetic_kind`` names it: ``shapes`` is
:mod:`sam_hf.data.synthetic.shapes` (flat shapes on smooth textures), ``clutter``
:mod:`sam_hf.data.synthetic.clutter` (the same shapes shaded and partly hidden in a busy
scene). Both render the same dict, so one row writer serves both; the style's generator
version keys the Arrow cache.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets

from sam_hf.data import rle
from sam_hf.data.build import save_atomically
from sam_hf.data.schema import make_object
from sam_hf.data.synthetic import clutter, shapes
from sam_hf.data.synthetic.drawing import cached_rows, encode_png
from sam_hf.data.synthetic.shapes import shape_phrase

#: Renderer and generator version of each style.
STYLES: dict[str, tuple[Callable[..., dict[str, Any]], str]] = {
    "shapes": (shapes.render_shapes_image, shapes.GENERATOR_VERSION),
    "clutter": (clutter.render_clutter_image, clutter.GENERATOR_VERSION),
}


def iter_shape_rows(
    num_images: int, seed: int, image_size: tuple[int, int] = (256, 256), style: str = "shapes"
) -> Iterator[dict[str, Any]]:
    """Yield shape images as schema rows (``FEATURES``) with inline PNG bytes.

    ``category`` is the shape name, ``noun_phrase`` ``"{color} {shape}"``, attributes
    ``{"color", "shape"}``; ``image_id`` is ``shapes_{index:05d}``. ``style`` is ``shapes``
    (flat shapes on smooth textures, :mod:`~sam_hf.data.synthetic.shapes`) or ``clutter`` (shaded, occluded shapes in a
    busy scene, :mod:`sam_hf.data.synthetic.clutter`).
    """
    render, _ = _style(style)
    for index in range(int(num_images)):
        sample = render(seed, index, image_size)
        label = sample["label_map"]
        ids = list(range(1, len(sample["objects"]) + 1))
        rles = rle.encode_instances(label, ids)
        areas, boxes = rle.area(rles), rle.to_bbox(rles)
        objects = [
            make_object(
                segmentation=r,
                bbox=boxes[k].tolist(),
                area=float(areas[k]),
                category=o["shape"],
                noun_phrase=shape_phrase(o["color"], o["shape"]),
                attributes={"color": o["color"], "shape": o["shape"]},
            )
            for k, (r, o) in enumerate(zip(rles, sample["objects"]))
        ]
        yield {
            "image": {"bytes": encode_png(sample["image"]), "path": None},
            "image_id": f"shapes_{index:05d}",
            "width": int(label.shape[1]),
            "height": int(label.shape[0]),
            "objects": objects,
            "negative_phrases": sample["negative_phrases"],
        }


def _style(style: str) -> tuple[Callable[..., dict[str, Any]], str]:
    """Renderer and generator version of ``style``."""
    if style not in STYLES:
        raise ValueError(f"unknown shapes style {style!r}; expected one of {sorted(STYLES)}")
    return STYLES[style]


def _shape_rows_generator(
    num_images: int, seed: int, height: int, width: int, version: str, style: str = "shapes"
) -> Iterator[dict[str, Any]]:
    # Top-level (not a closure) so datasets can hash it; ``version`` keys the Arrow cache.
    del version
    yield from iter_shape_rows(num_images, seed, (height, width), style)


def make_shapes_dataset(
    num_images: int,
    seed: int,
    image_size: tuple[int, int] = (256, 256),
    cache_dir: str | None = None,
    style: str = "shapes",
) -> datasets.Dataset:
    """The shapes data as a ``datasets.Dataset`` with ``FEATURES``, cached as Arrow.

    A second call with the same arguments (and generator version) loads from the cache
    instead of drawing again. ``style`` as in :func:`iter_shape_rows`.
    """
    return cached_rows(
        _shape_rows_generator,
        num_images,
        seed,
        image_size,
        cache_dir,
        version=_style(style)[1],
        style=style,
    )


def write_shapes(
    path: Path,
    split: str,
    num_images: int,
    seed: int,
    image_size: tuple[int, int],
    style: str = "shapes",
    command: str = "shapes",
) -> None:
    """Draw shapes into a DatasetDict folder holding one ``split``, written atomically.

    The Arrow cache of the drawing lives in a temporary folder, so no second copy is left in
    ``~/.cache``: the folder is the data (held-out sets, replay sets).
    """
    with tempfile.TemporaryDirectory() as cache:
        ds = make_shapes_dataset(num_images, seed, image_size, cache_dir=cache, style=style)
        save_atomically(datasets.DatasetDict({split: ds}), path, command=command)
