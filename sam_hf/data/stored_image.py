"""Images as the converters store them: upright pixels without EXIF, masks turned with them.

Orientation is fixed once, at conversion (:func:`read_for_conversion`): the Arrow cache stores
upright (displayed) pixels, re-encoded as PNG without EXIF so ``datasets`` cannot rotate them
again, and masks that followed the raw pixels are rotated with the image
(:func:`orient_label_map`, :func:`orient_object`). Which grid masks were drawn on is the rule of
:mod:`sam_hf.data.images` (:func:`~sam_hf.data.images.mask_frame`); here a mismatch becomes a
:class:`~sam_hf.data.report.ConversionError` and every repair is counted in the
:class:`~sam_hf.data.report.Report`. Images that are 8-bit RGB or L with no orientation to
apply keep their original bytes.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam_hf.data import rle
from sam_hf.data.images import (
    ImageInfo,
    ImageReadError,
    load_image,
    mask_frame,
    orient_array,
    orient_bbox,
    size_mismatch_text,
)
from sam_hf.data.report import ConversionError, Report

logger = logging.getLogger("sam_hf")


@dataclass
class StoredImage:
    """An image as a converter stores it: upright pixels, no EXIF orientation."""

    #: Encoded bytes for the ``image`` column: the file's own bytes when :attr:`ImageInfo.as_stored`,
    #: else a PNG of the upright 8-bit RGB pixels (no EXIF).
    data: bytes
    info: ImageInfo

    @property
    def width(self) -> int:
        return self.info.displayed_size[0]

    @property
    def height(self) -> int:
        return self.info.displayed_size[1]

    #: Repairs to count once the row is written: (reason, text), and warnings to log.
    fixes: list[tuple[str, str]] = field(default_factory=list)

    def masks_follow(
        self,
        mask_size: tuple[int | None, int | None] | None,
        *,
        file: str | os.PathLike[str],
        record: str,
        lead: str | None = None,
    ) -> str:
        """Which grid masks of (width, height) ``mask_size`` were drawn on: ``"raw"`` or
        ``"displayed"`` (the rule of the module docstring; ``None`` parts are unknown).

        A size that is neither raises a ``ConversionError`` (``mask_size_mismatch``) naming
        ``file`` and ``record``; ``lead`` replaces the message's opening ("mask is WxH (WxH)").
        Ambiguous images are noted for :meth:`count` (``exif_orientation_ambiguous``).
        """
        try:
            frame, ambiguous = mask_frame(self.info, mask_size)
        except ValueError:
            raise ConversionError(
                size_mismatch_text(self.info, mask_size, lead),  # type: ignore[arg-type]
                file=file,
                record=record,
                reason="mask_size_mismatch",
            ) from None
        where = f"{file}: {record}"
        if ambiguous:
            known = mask_size is not None and all(v is not None for v in mask_size)
            w, h = self.info.raw_size
            why = (
                f"stored and displayed sizes are both {w}x{h}" if known else "no mask size declared"
            )
            self.fixes.append(
                (
                    "exif_orientation_ambiguous",
                    f"{where}: EXIF orientation {self.info.orientation} and {why}: masks taken to"
                    " follow the stored pixels and rotated with the image (if they were drawn on"
                    " the displayed image, save it upright without EXIF orientation and convert"
                    " again)",
                )
            )
        elif self.info.moves_pixels:
            self.fixes.append(
                (
                    "exif_orientation_applied",
                    f"{where}: stored upright (EXIF orientation {self.info.orientation}); masks"
                    f" followed the {'stored' if frame == 'raw' else 'displayed'} pixels",
                )
            )
        return frame

    def count(self, report: Report) -> None:
        """Count this image's repairs in ``report.fixed`` (call once its row is complete);
        ambiguous orientations are also logged as warnings."""
        reasons = {r for r, _ in self.fixes}
        if self.info.moves_pixels and not reasons & {
            "exif_orientation_ambiguous",
            "exif_orientation_applied",
        }:
            report.fix(
                "exif_orientation_applied",
                f"{self.info.name}: stored upright (EXIF orientation {self.info.orientation});"
                " no masks",
            )
        for reason, text in self.fixes:
            report.fix(reason, text)
            if reason == "exif_orientation_ambiguous":
                logger.warning("%s", text)
        self.fixes = []


def read_for_conversion(path: str | os.PathLike[str], record: str) -> StoredImage:
    """Read an image file for a converter: upright, 8-bit, self-contained bytes.

    Raises a ``ConversionError`` (reasons ``missing_image``, ``corrupt_image``,
    ``unsupported_image``) naming the file and the record. High-depth and alpha images are
    noted for :meth:`StoredImage.count` (``high_bit_depth_scaled``, ``alpha_flattened``).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConversionError(
            "image file not found", file=path, record=record, reason="missing_image"
        ) from None
    except OSError as e:
        raise ConversionError(
            f"cannot read image: {e}", file=path, record=record, reason="corrupt_image"
        ) from None
    try:
        rgb, info = load_image(data, name=str(path), orient=True)
    except ImageReadError as e:
        raise ConversionError(e.detail, file=path, record=record, reason=e.reason) from None
    if not info.as_stored:
        buf = io.BytesIO()
        rgb.save(buf, format="PNG")
        data = buf.getvalue()
    stored = StoredImage(data, info)
    where = f"{path}: {record}"
    if info.value_range is not None:
        lo, hi = info.value_range
        stored.fixes.append(
            ("high_bit_depth_scaled", f"{where}: {info.mode} values {lo:g}..{hi:g} -> 0..255")
        )
    if info.alpha:
        stored.fixes.append(("alpha_flattened", f"{where}: {info.mode} alpha over black"))
    return stored


def orient_label_map(label_map: np.ndarray, stored: StoredImage, frame: str) -> np.ndarray:
    """An instance-id map on the grid ``frame`` -> the upright grid the image is stored on."""
    if frame == "raw" and stored.info.moves_pixels:
        return orient_array(label_map, stored.info.orientation)
    return label_map


def orient_object(obj: dict[str, Any], stored: StoredImage, frame: str) -> dict[str, Any]:
    """A schema object (RLE, bbox) on the grid ``frame`` -> the upright grid of the image."""
    if frame != "raw" or not stored.info.moves_pixels:
        return obj
    o = stored.info.orientation
    mask = orient_array(rle.decode(obj["segmentation"]), o)
    seg = rle.encode(mask)
    return {
        **obj,
        "segmentation": seg,
        "bbox": orient_bbox(obj["bbox"], o, stored.info.raw_size),
    }
