"""Reading and checking what converters read: json files, instance masks, image folders, geometry.

Everything a converter can check without decoding an image happens while it *plans* (see
:mod:`sam_hf.data.build`), so a malformed annotation file fails before any pixel is read. Each
check raises a :class:`~sam_hf.data.report.ConversionError` naming the file and the record,
with a ``reason`` under which ``on_error="skip"`` counts it. Shared by every source format in
:mod:`sam_hf.data.sources`.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from sam_hf.data.report import ConversionError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: PIL modes accepted for instance-id masks: single channel, 8 or 16 bit.
MASK_MODES_8BIT = ("L",)
MASK_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def read_instance_mask(path: str | os.PathLike[str], record: str) -> np.ndarray:
    """Instance-id mask (H, W) uint8/uint16 from a single-channel 8- or 16-bit image.

    Its size is checked by the caller against the image's stored and displayed sizes (the EXIF
    rule of :mod:`sam_hf.data.images`); a mismatch is an error, never a resize, because
    resizing an id map silently corrupts the instances.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode, fmt = im.mode, im.format
            accepted = mode in MASK_MODES_8BIT + MASK_MODES_16BIT or (mode == "I" and fmt == "PNG")
            if not accepted:
                raise ConversionError(
                    f"mask must be a single-channel 8-bit (L) or 16-bit (I;16) image of instance ids,"
                    f" got PIL mode {mode!r}",
                    file=path,
                    record=record,
                    reason="bad_mask_format",
                )
            array = np.array(im)
    except FileNotFoundError:
        raise ConversionError(
            "mask file not found", file=path, record=record, reason="missing_mask"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(
            f"corrupt or unreadable mask ({type(e).__name__}: {e})",
            file=path,
            record=record,
            reason="corrupt_mask",
        ) from None
    if array.ndim != 2:
        raise ConversionError(
            f"mask must have one channel, got array shape {array.shape}",
            file=path,
            record=record,
            reason="bad_mask_format",
        )
    if mode == "I":  # 16-bit PNG opened by an older Pillow as 32-bit ints
        if array.min() < 0 or array.max() > 65535:
            raise ConversionError(
                "mask values outside the 16-bit range",
                file=path,
                record=record,
                reason="bad_mask_format",
            )
        array = array.astype(np.uint16)
    return array


def image_value(data: bytes) -> dict[str, Any]:
    """The ``image`` column value: encoded bytes only (no path), so the row is self-contained."""
    return {"bytes": data, "path": None}


def image_format_suffix(data: bytes) -> str:
    """File suffix (".png", ".jpg"...) of encoded image bytes, from their actual format."""
    with Image.open(io.BytesIO(data)) as im:
        fmt = (im.format or "PNG").lower()
    return {"jpeg": ".jpg", "tiff": ".tif"}.get(fmt, "." + fmt)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files ignored)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


# ---------------------------------------------------------------------------------------------
# Geometry checks shared by the json formats
# ---------------------------------------------------------------------------------------------


def check_polygons(polygons: Any, file: str | Path, record: str) -> list[list[float]]:
    """Validate COCO-style polygons (one object may have several parts) and return them as floats.

    A part needs at least 3 points (6 numbers) and an even count. pycocotools would read a
    4-number part as a *box*, so a 2-point "polygon" must not slip through.
    """
    if not isinstance(polygons, list) or not polygons:
        raise ConversionError(
            "polygon segmentation must be a non-empty list of [x1, y1, x2, y2, ...] lists",
            file=file,
            record=record,
            reason="bad_segmentation",
        )
    parts = []
    for i, part in enumerate(polygons):
        if not isinstance(part, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in part
        ):
            raise ConversionError(
                f"polygon part {i} is not a flat list of numbers",
                file=file,
                record=record,
                reason="bad_segmentation",
            )
        if len(part) % 2:
            raise ConversionError(
                f"polygon part {i} has an odd number of coordinates ({len(part)})",
                file=file,
                record=record,
                reason="bad_segmentation",
            )
        if len(part) < 6:
            raise ConversionError(
                f"polygon part {i} has {len(part) // 2} points; a polygon needs at least 3",
                file=file,
                record=record,
                reason="polygon_too_few_points",
            )
        values = [float(v) for v in part]
        if not all(np.isfinite(values)):
            raise ConversionError(
                f"polygon part {i} has non-finite coordinates",
                file=file,
                record=record,
                reason="bad_segmentation",
            )
        parts.append(values)
    return parts


def polygons_outside(polygons: list[list[float]], width: int, height: int) -> bool:
    """Whether any vertex lies outside the image ``[0, width] x [0, height]`` (pixel edges)."""
    for part in polygons:
        xs, ys = part[0::2], part[1::2]
        if min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height:
            return True
    return False


def clip_bbox(bbox: list[float], width: int, height: int) -> tuple[list[float], bool]:
    """Clip an xywh box to the image; returns the box and whether it changed."""
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    clipped = [x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)]
    changed = any(abs(a - b) > 1e-6 for a, b in zip(clipped, (x, y, w, h)))
    return clipped, changed


def check_bbox(bbox: Any, file: str | Path, record: str) -> list[float]:
    """A 4-number xywh box with non-negative size, as floats."""
    if (
        not isinstance(bbox, list | tuple)
        or len(bbox) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        or not all(np.isfinite([float(v) for v in bbox]))
    ):
        raise ConversionError(
            f"bbox must be [x, y, w, h] numbers, got {bbox!r}",
            file=file,
            record=record,
            reason="bad_bbox",
        )
    if bbox[2] < 0 or bbox[3] < 0:
        raise ConversionError(
            f"bbox has negative width or height: {bbox!r}",
            file=file,
            record=record,
            reason="bad_bbox",
        )
    return [float(v) for v in bbox]


def check_attributes(attributes: Any, file: str | Path, record: str) -> dict[str, str]:
    """An attributes mapping as ``{str: str}`` (numbers and booleans are written as text)."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise ConversionError(
            f"attributes must be a key -> value mapping, got {type(attributes).__name__}",
            file=file,
            record=record,
            reason="bad_attributes",
        )
    out = {}
    for k, v in attributes.items():
        if isinstance(v, dict | list):
            raise ConversionError(
                f"attribute {k!r} must be a single value, got {type(v).__name__}",
                file=file,
                record=record,
                reason="bad_attributes",
            )
        out[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def load_json(path: str | os.PathLike[str], what: str = "annotation file") -> Any:
    """Parse a json file; unreadable or malformed json is an unskippable error naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConversionError(
            f"{what} not found", file=path, reason="missing_file", skippable=False
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(
            f"cannot parse {what}: {e}", file=path, reason="corrupt_annotation", skippable=False
        ) from None
