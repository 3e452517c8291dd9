"""COCO RLE helpers on top of pycocotools.

Everything is exact: masks go in as bool arrays and come back bit-identical, polygons are
rasterised the way pycocotools' ``annToMask`` does (``frPyObjects`` + ``merge``), so what a
converter stores is what the COCO tools would have produced.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

#: pycocotools' ``area``/``toBbox`` overflow on 256+ RLEs at once; we chunk below this size.
_CHUNK = 128


def encode(mask: np.ndarray) -> dict[str, Any]:
    """Bool (H, W) mask -> compressed RLE ``{"size": [h, w], "counts": str}``."""
    m = np.asfortranarray(np.asarray(mask, dtype=bool).astype(np.uint8))
    rle = mask_utils.encode(m)
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": rle["counts"].decode("ascii"),
    }


def encode_instances(label_map: np.ndarray, ids: list[int] | None = None) -> list[dict[str, Any]]:
    """Instance-id map (H, W) -> the RLE of ``label_map == id`` for each id.

    ``ids`` defaults to every non-zero id present, ascending (an id asked for but absent gets
    the RLE of an empty mask). The same strings as :func:`encode` per id, but each RLE is built from the
    pixels inside the instance's bounding box only: run lengths in column-major (COCO) order
    are read off the pixel positions, then compressed by pycocotools. A 720x1280 frame with
    100+ apples would otherwise compare and encode a full-size mask per apple.
    """
    height, width = label_map.shape
    found: dict[int, dict[str, Any]] = {}
    for index, box in enumerate(ndimage.find_objects(label_map)):
        if box is None:
            continue
        inst = index + 1
        rows, cols = box
        cols_in, rows_in = np.nonzero((label_map[box] == inst).T)  # column-major pixel order
        pos = (cols_in + cols.start).astype(np.int64) * height + (rows_in + rows.start)
        breaks = np.flatnonzero(np.diff(pos) != 1)
        starts = np.concatenate(([pos[0]], pos[breaks + 1]))
        ends = np.concatenate((pos[breaks], [pos[-1]])) + 1
        zeros = starts - np.concatenate(([0], ends[:-1]))
        counts = np.stack([zeros, ends - starts], axis=1).ravel().tolist()
        if ends[-1] < height * width:  # no trailing empty run: same string as pycocotools' encode
            counts.append(int(height * width - ends[-1]))
        found[inst] = from_uncompressed({"size": [height, width], "counts": counts})
    if ids is None:
        return list(found.values())
    return [found[i] if i in found else encode(label_map == i) for i in ids]


def encode_many(masks: np.ndarray) -> list[dict[str, Any]]:
    """Bool (N, H, W) -> compressed RLEs, the same as :func:`encode` per mask, in one call.

    One batched transpose to the column-major (H, W, N) layout pycocotools wants and one
    encode call for all the masks (the metrics encode every prediction of an image at once).
    """
    if len(masks) == 0:
        return []
    fortran = np.ascontiguousarray(masks.view(np.uint8).transpose(0, 2, 1)).transpose(2, 1, 0)
    return [
        {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}
        for r in mask_utils.encode(fortran)
    ]


def _as_pycoco(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [int(s) for s in rle["size"]], "counts": counts}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """Compressed (or uncompressed, list ``counts``) RLE -> bool (H, W)."""
    if isinstance(rle["counts"], list):
        h, w = rle["size"]
        rle = mask_utils.frPyObjects(rle, h, w)
    return mask_utils.decode(_as_pycoco(rle)).astype(bool)


def decode_many(rles: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """List of RLEs -> bool (N, H, W); an empty list gives shape (0, H, W)."""
    if not rles:
        return np.zeros((0, height, width), dtype=bool)
    return np.stack([decode(r) for r in rles])


def from_polygons(polygons: list[list[float]], height: int, width: int) -> dict[str, Any]:
    """COCO polygons (one object may have several parts) -> one merged compressed RLE."""
    parts = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    merged = mask_utils.merge(parts)
    return {
        "size": [int(merged["size"][0]), int(merged["size"][1])],
        "counts": merged["counts"].decode("ascii"),
    }


def from_uncompressed(rle: dict[str, Any]) -> dict[str, Any]:
    """COCO uncompressed RLE (``counts`` a list of ints) -> compressed RLE."""
    h, w = rle["size"]
    comp = mask_utils.frPyObjects(rle, int(h), int(w))
    return {
        "size": [int(comp["size"][0]), int(comp["size"][1])],
        "counts": comp["counts"].decode("ascii"),
    }


def area(rles: list[dict[str, Any]]) -> np.ndarray:
    """Pixel areas of many RLEs (chunked: pycocotools overflows on 256+ at once)."""
    out = [
        mask_utils.area([_as_pycoco(r) for r in rles[i : i + _CHUNK]])
        for i in range(0, len(rles), _CHUNK)
    ]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def to_bbox(rles: list[dict[str, Any]]) -> np.ndarray:
    """Tight xywh boxes (pixels) of many RLEs, shape (N, 4)."""
    out = [
        mask_utils.toBbox([_as_pycoco(r) for r in rles[i : i + _CHUNK]])
        for i in range(0, len(rles), _CHUNK)
    ]
    return np.concatenate(out).reshape(-1, 4).astype(np.float64) if out else np.zeros((0, 4))
