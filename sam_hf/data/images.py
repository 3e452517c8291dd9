"""Reading images: the one function every reader calls.

:func:`load_image` is used by the converters (through :mod:`sam_hf.data.stored_image`, behind
``scripts/prepare_*.py``), the training and evaluation dataset
(:class:`sam_hf.data.transforms.SegmentationDataset`) and ``scripts/predict.py``. It takes a
path, encoded bytes, a ``datasets`` image value (``{"bytes", "path"}``) or a PIL image and
returns an **8-bit RGB PIL image** and an :class:`ImageInfo` saying what was done.

Pixel values
------------
- 8-bit RGB and L (greyscale): as stored (L repeated to three channels, as PIL converts it).
- P (palette), 1, CMYK, YCbCr: PIL's own conversion to RGB.
- Alpha (RGBA, LA, PA, palette with transparency): composited over **black** (the colour is
  multiplied by the opacity), so a transparent pixel contributes nothing whatever hidden colour
  it holds.
- High depth: I;16 (16-bit greyscale), I (32-bit int), F (float) and 16-bit-per-channel RGB/RGBA
  PNG and TIFF (decoded with OpenCV: PIL keeps only their high byte). They are scaled linearly
  from **the image's own min..max** (all channels together, so ordering and colour ratios hold)
  to 0..255. Not by the bit depth, because high-depth sources (12- or 14-bit sensors written
  as 16 bits, thermal and depth maps, float reflectance) rarely span their container: values
  1000..3000 divided by 65535 would leave 9 grey levels of near-black, and PIL's plain
  ``convert("RGB")`` saturates them to a white image. The price: brightness is normalised per
  image (like auto-contrast). A constant image is scaled by its bit depth (floats: clipped to
  0..1); non-finite values become 0.
- Any other mode is refused with :class:`ImageReadError` naming the file.

EXIF orientation
----------------
*Raw* is the stored pixel grid; *displayed* is the image after its EXIF orientation (what
viewers, phones, ``cv2.imread`` and ``datasets``' own image decoding show). ``load_image``
returns the displayed image unless ``orient=False``. Masks (an instance-id PNG, a COCO
``width``/``height`` or RLE ``size``) say which grid they were drawn on by their size
(:func:`mask_frame`):

- a size equal to the raw size only: the masks follow the raw pixels;
- equal to the displayed size only: they follow the displayed image;
- equal to both while the orientation moves pixels (a square image rotated by 90 degrees, or
  any image flipped or rotated by 180 degrees): ambiguous. They are taken to follow the raw
  pixels (the grid a program that writes masks from pixel arrays sees, and what the converters
  assumed before) and the image is warned about and counted (``exif_orientation_ambiguous``);
- neither: an error (``mask_size_mismatch``).

Orientation is fixed once, at conversion (:mod:`sam_hf.data.stored_image`): the Arrow cache
stores upright (displayed) pixels and masks that followed the raw pixels are rotated with the
image (:func:`orient_array`, :func:`orient_bbox`). Nothing downstream needs EXIF.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger("sam_hf")

#: EXIF tag of the orientation (1 = upright, 2..8 = flips and rotations).
ORIENTATION_TAG = 0x0112

#: EXIF orientation -> the PIL transpose that turns the raw pixels into the displayed image
#: (the table of ``PIL.ImageOps.exif_transpose``).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

#: Modes PIL converts to RGB by itself, correctly.
_PIL_TO_RGB = ("RGB", "L", "P", "1", "CMYK", "YCbCr")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

#: How often one process warns about images it cannot tell apart (transforms).
_WARNED: set[str] = set()


class ImageReadError(ValueError):
    """An image that cannot be read; ``reason`` is ``missing_image``, ``corrupt_image`` or
    ``unsupported_image``, and the message names the file."""

    def __init__(self, detail: str, *, name: str, reason: str) -> None:
        self.detail = detail
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {detail}" if name else detail)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.detail, self.name, self.reason))


def _rebuild(detail: str, name: str, reason: str) -> ImageReadError:
    return ImageReadError(detail, name=name, reason=reason)


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`load_image` found and did."""

    name: str
    #: (width, height) of the stored pixels.
    raw_size: tuple[int, int]
    #: EXIF orientation, 1 when absent or invalid.
    orientation: int
    #: Stored mode: a PIL mode, or ``"RGB;16"`` / ``"RGBA;16"`` for 16-bit colour.
    mode: str
    #: Whether the returned pixels have the orientation applied (displayed) or not (raw).
    oriented: bool
    #: The source range stretched to 0..255 (high-depth images only).
    value_range: tuple[float, float] | None = None
    #: Whether an alpha channel was composited over black.
    alpha: bool = False

    @property
    def displayed_size(self) -> tuple[int, int]:
        w, h = self.raw_size
        return (h, w) if self.orientation in (5, 6, 7, 8) else (w, h)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the returned pixels."""
        return self.displayed_size if self.oriented else self.raw_size

    @property
    def moves_pixels(self) -> bool:
        return self.orientation != 1

    @property
    def as_stored(self) -> bool:
        """True when the encoded bytes already decode to exactly these pixels in any reader:
        8-bit RGB or L, no alpha, nothing to orient."""
        return self.mode in ("RGB", "L") and not self.moves_pixels


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _source_bytes(source: Any, name: str | None) -> tuple[bytes | None, Image.Image | None, str]:
    """(encoded bytes, or an already decoded PIL image) and the name used in messages."""
    if isinstance(source, Image.Image):
        return None, source, name or str(getattr(source, "filename", "") or "<image>")
    if isinstance(source, dict):  # a datasets image value
        if source.get("bytes") is not None:
            return bytes(source["bytes"]), None, name or str(source.get("path") or "<image bytes>")
        if source.get("path") is None:
            raise ImageReadError("image value has neither bytes nor path", name=name or "<image>",
                                 reason="corrupt_image")  # fmt: skip
        source = source["path"]
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), None, name or "<image bytes>"
    path = Path(source)
    label = name or str(path)
    try:
        return path.read_bytes(), None, label
    except FileNotFoundError:
        raise ImageReadError("image file not found", name=label, reason="missing_image") from None
    except OSError as e:
        raise ImageReadError(
            f"cannot read image: {e}", name=label, reason="corrupt_image"
        ) from None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the pixels unreadable
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _sixteen_bit_colour(im: Image.Image, data: bytes | None) -> bool:
    """A 16-bit-per-channel colour PNG or TIFF, which PIL reads as 8-bit RGB(A)."""
    if data is None or im.mode not in ("RGB", "RGBA"):
        return False
    if im.format == "PNG" and len(data) > 25:
        return data[24] == 16 and data[25] in (2, 6)  # IHDR bit depth, colour type RGB/RGBA
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        bits = bits if isinstance(bits, tuple) else (bits,)
        return any(isinstance(b, int) and b > 8 for b in bits)
    return False


def _stretch(values: np.ndarray, name: str) -> tuple[np.ndarray, tuple[float, float]]:
    """High-depth values -> uint8 by the image's own min..max (see the module docstring)."""
    a = values.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        raise ImageReadError("image has no finite pixel value", name=name,
                             reason="unsupported_image")  # fmt: skip
    lo, hi = float(a[finite].min()), float(a[finite].max())
    a = np.where(finite, a, lo)
    if hi > lo:
        out = (a - lo) * (255.0 / (hi - lo))
    elif np.issubdtype(values.dtype, np.floating):
        out = np.clip(a, 0.0, 1.0) * 255.0
    else:
        top = 65535.0 if values.dtype.itemsize <= 2 or hi <= 65535 else float(2**31 - 1)
        out = np.clip(a, 0.0, top) * (255.0 / top)
    out = np.where(finite, out, 0.0)
    return np.rint(out).astype(np.uint8), (lo, hi)


def _over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 RGB composited over black with ``alpha`` in 0..1."""
    return np.rint(rgb.astype(np.float64) * alpha[..., None]).astype(np.uint8)


def _to_rgb8(
    im: Image.Image, data: bytes | None, name: str
) -> tuple[Image.Image, str, tuple[float, float] | None, bool]:
    """(8-bit RGB image, stored mode, stretched range or None, alpha flattened)."""
    mode = im.mode
    if _sixteen_bit_colour(im, data):
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.ndim != 3 or arr.shape[:2] != (im.height, im.width):
            raise ImageReadError(
                "16-bit colour image that OpenCV cannot decode to its stored size",
                name=name,
                reason="unsupported_image",
            )
        channels = arr.shape[2]
        mode = "RGBA;16" if channels == 4 else "RGB;16"
        rgb = arr[..., 2::-1] if channels >= 3 else np.repeat(arr[..., :1], 3, axis=2)
        out, rng = _stretch(rgb, name)
        if channels == 4:
            out = _over_black(out, arr[..., 3].astype(np.float64) / np.iinfo(arr.dtype).max)
        return Image.fromarray(out, "RGB"), mode, rng, channels == 4
    if mode == "RGB":
        return im, mode, None, False
    if mode == "P" and "transparency" in im.info:
        mode = "P+transparency"
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = np.asarray(im.convert("RGBA"))
        out = _over_black(rgba[..., :3], rgba[..., 3].astype(np.float64) / 255.0)
        return Image.fromarray(out, "RGB"), mode, None, True
    if mode in _PIL_TO_RGB:
        return im.convert("RGB"), mode, None, False
    if mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(im)
        if arr.ndim != 2:
            raise ImageReadError(f"unexpected array shape {arr.shape} for mode {mode}",
                                 name=name, reason="unsupported_image")  # fmt: skip
        out, rng = _stretch(arr, name)
        return Image.fromarray(np.repeat(out[..., None], 3, axis=2), "RGB"), mode, rng, False
    raise ImageReadError(
        f"unsupported image mode {mode!r} (supported: 8-bit RGB/L/P/1/CMYK/YCbCr, alpha modes"
        " RGBA/LA/PA, high-depth I;16/I/F and 16-bit RGB(A) PNG/TIFF)",
        name=name,
        reason="unsupported_image",
    )


def load_image(
    source: Any, *, name: str | None = None, orient: bool = True
) -> tuple[Image.Image, ImageInfo]:
    """Decode ``source`` fully into an 8-bit RGB PIL image and its :class:`ImageInfo`.

    ``source``: a path, encoded bytes, a ``datasets`` image value or a PIL image. ``orient``:
    apply the EXIF orientation (the displayed image) or not (the raw pixels). ``name`` is used
    in messages (default: the path). Raises :class:`ImageReadError` naming the file for a
    missing, truncated, corrupt or unsupported image. The pixel rules are in the module
    docstring.
    """
    data, im, label = _source_bytes(source, name)
    try:
        if im is None:
            im = Image.open(io.BytesIO(data))
        im.load()  # decodes every pixel: a truncated file fails here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(
            f"corrupt or unreadable image ({type(e).__name__}: {e})",
            name=label,
            reason="corrupt_image",
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(str(e), name=label, reason="unsupported_image") from None
    orientation = _orientation(im)
    raw_size = (int(im.width), int(im.height))
    rgb, mode, value_range, alpha = _to_rgb8(im, data, label)
    oriented = bool(orient)
    if orient and orientation != 1:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    info = ImageInfo(label, raw_size, orientation, mode, oriented, value_range, alpha)
    return rgb, info


# ---------------------------------------------------------------------------------------------
# Which grid masks were drawn on, and turning raw-grid masks upright
# ---------------------------------------------------------------------------------------------


def mask_frame(
    info: ImageInfo, mask_size: tuple[int | None, int | None] | None
) -> tuple[str, bool]:
    """(``"raw"`` or ``"displayed"``, ambiguous) for masks of (width, height) ``mask_size``.

    The rule of the module docstring. ``None`` (or a ``None`` part: a size nothing declares)
    matches any size, so it is ambiguous when the orientation moves pixels. Raises
    ``ValueError`` when the size is neither the raw nor the displayed one.
    """
    raw, shown = tuple(info.raw_size), tuple(info.displayed_size)
    parts = (None, None) if mask_size is None else tuple(mask_size)

    def fits(size: tuple[int, int]) -> bool:
        return all(p is None or int(p) == s for p, s in zip(parts, size))

    is_raw, is_shown = fits(raw), fits(shown)
    if is_raw and is_shown:
        return "raw", info.moves_pixels
    if is_raw:
        return "raw", False
    if is_shown:
        return "displayed", False
    raise ValueError(size_mismatch_text(info, parts))


def size_mismatch_text(
    info: ImageInfo, mask_size: tuple[int | None, int | None], lead: str | None = None
) -> str:
    """``"mask is AxB (WxH) but its image is CxD"``, with the displayed size when EXIF moves it."""
    lead = lead or f"mask is {mask_size[0]}x{mask_size[1]} (WxH) but its image is"
    text = f"{lead} {_wxh(info.raw_size)}"
    if info.moves_pixels and info.displayed_size != info.raw_size:
        text += f" (stored; {_wxh(info.displayed_size)} as displayed, EXIF orientation {info.orientation})"
    return text


def orient_array(array: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W, ...) array on the raw grid -> the displayed grid (the transpose of ``PIL``)."""
    a = np.asarray(array)
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def orient_point(
    x: float, y: float, orientation: int, raw_size: tuple[int, int]
) -> tuple[float, float]:
    """A point in pixel-edge coordinates of the raw grid -> the displayed grid."""
    w, h = raw_size
    return {
        1: (x, y),
        2: (w - x, y),
        3: (w - x, h - y),
        4: (x, h - y),
        5: (y, x),
        6: (h - y, x),
        7: (h - y, w - x),
        8: (y, w - x),
    }[orientation]


def orient_bbox(bbox: list[float], orientation: int, raw_size: tuple[int, int]) -> list[float]:
    """An xywh box on the raw grid -> the displayed grid."""
    x, y, w, h = (float(v) for v in bbox)
    xa, ya = orient_point(x, y, orientation, raw_size)
    xb, yb = orient_point(x + w, y + h, orientation, raw_size)
    return [min(xa, xb), min(ya, yb), abs(xb - xa), abs(yb - ya)]


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)
