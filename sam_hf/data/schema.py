"""The one sample schema every converter emits and everything downstream reads.

Keeping a single schema is what lets MinneApple PNGs, per-image JSON polygons, COCO json and
SA-Co all reach the same transforms, prompt samplers, losses and metrics. Masks are stored as
COCO *compressed* RLE (``counts`` is a string) so a 1280x720 frame with 123 apples stays a
few kB in Arrow, and decoding is exact (pycocotools).
"""

from __future__ import annotations

from typing import Any

import datasets

#: Features of one instance inside ``objects``.
OBJECT_FEATURES = {
    "segmentation": {
        "size": datasets.List(datasets.Value("int32"), length=2),  # [h, w]
        "counts": datasets.Value("string"),  # compressed COCO RLE
    },
    "bbox": datasets.List(datasets.Value("float32"), length=4),  # [x, y, w, h] pixels
    "area": datasets.Value("float32"),
    "category": datasets.Value("string"),
    "noun_phrase": datasets.Value("string"),  # may be ""
    # key -> value strings, e.g. {"ripeness": "ripe", "color": "red"}; stored as two aligned
    # lists because Arrow structs need a fixed key set and attribute keys differ per dataset.
    "attributes": {
        "keys": datasets.List(datasets.Value("string")),
        "values": datasets.List(datasets.Value("string")),
    },
    "iscrowd": datasets.Value("bool"),
}

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_id": datasets.Value("string"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "objects": datasets.List(OBJECT_FEATURES),
        "negative_phrases": datasets.List(datasets.Value("string")),
    }
)


def make_object(
    segmentation: dict[str, Any],
    bbox: list[float],
    area: float,
    category: str,
    noun_phrase: str = "",
    attributes: dict[str, str] | None = None,
    iscrowd: bool = False,
) -> dict[str, Any]:
    """Build one ``objects`` entry in schema form (attributes as aligned key/value lists)."""
    attributes = attributes or {}
    counts = segmentation["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {
        "segmentation": {"size": [int(s) for s in segmentation["size"]], "counts": counts},
        "bbox": [float(v) for v in bbox],
        "area": float(area),
        "category": str(category),
        "noun_phrase": str(noun_phrase or ""),
        "attributes": {
            "keys": [str(k) for k in attributes],
            "values": [str(v) for v in attributes.values()],
        },
        "iscrowd": bool(iscrowd),
    }


def attributes_dict(obj_attributes: dict[str, list[str]]) -> dict[str, str]:
    """Turn a stored ``attributes`` struct back into a plain ``{key: value}`` dict."""
    return dict(zip(obj_attributes["keys"], obj_attributes["values"]))
