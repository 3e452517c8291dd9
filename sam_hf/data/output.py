"""Shared machinery of the dataset converters: errors, skip counting, Arrow caching, atomic save.

Every converter (MinneApple, per-image JSON polygons, COCO-text, SA-Co) follows the same plan:

1. *Plan* (cheap, every run): list the input files, parse the annotation json, check what can be
   checked without decoding pixels, and derive a fingerprint from the file list (path, size,
   mtime), the options and the converter version.
2. *Generate* (only when the fingerprint is new): a top-level generator decodes the images and
   masks and yields rows in the one schema (:data:`sam_hf.data.schema.FEATURES`);
   ``datasets.Dataset.from_generator`` writes them to an Arrow cache keyed by the fingerprint,
   so an identical re-run memory-maps that cache instead of decoding anything.
3. *Save*: ``save_to_disk`` into a temporary folder beside the output, renamed into place at
   the end, so a failure never leaves a partial dataset behind.

Bad input raises :class:`ConversionError`, whose message names the file and the record. With
``on_error="skip"`` the skippable cases become counted skips instead; coordinates outside the
image are clipped and zero-area objects dropped in both modes, and counted. The counts are kept
in a :class:`Report` that the generator persists beside the cache, so a run that loads from the
cache prints the same summary as the run that built it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

import sam_hf
from sam_hf.data.schema import FEATURES

#: Bump when the rows any converter writes change for the same input (invalidates every cache).
CONVERT_VERSION = "2"

ON_ERROR_CHOICES = ("raise", "skip")

#: How many example records a summary lists per reason.
MAX_EXAMPLES = 5

#: Image rows hold whole encoded images (a MinneApple frame is ~1.5 MB): keep Arrow write
#: batches small so a conversion's memory does not grow with the batch size.
WRITER_BATCH_SIZE = 32

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: PIL modes accepted for instance-id masks: single channel, 8 or 16 bit.
MASK_MODES_8BIT = ("L",)
MASK_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ConversionError(ValueError):
    """Bad input, with the file and the record it was found in.

    ``reason`` is a short stable key (``"corrupt_image"``, ``"unknown_image_id"``...) under which
    ``on_error="skip"`` counts the record; ``skippable=False`` marks problems no skip can fix
    (an empty dataset, an unreadable annotation file).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike[str] | None = None,
        record: str | None = None,
        reason: str = "invalid_record",
        skippable: bool = True,
    ) -> None:
        self.detail = message
        self.file = None if file is None else str(file)
        self.record = record
        self.reason = reason
        self.skippable = skippable
        super().__init__(self.format())

    def format(self) -> str:
        """``"<file>: <record>: <message>"`` with absent parts left out."""
        return ": ".join(p for p in (self.file, self.record, self.detail) if p)

    def where(self) -> str:
        """``"<file>: <record>"``: the short form used in summaries."""
        return ": ".join(p for p in (self.file, self.record) if p) or self.detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword-only arguments do not survive pickling by default (datasets
        # may pass them between processes); rebuild from the same fields.
        return (_rebuild_error, (self.detail, self.file, self.record, self.reason, self.skippable))


def _rebuild_error(
    detail: str, file: str | None, record: str | None, reason: str, skippable: bool
) -> ConversionError:
    return ConversionError(detail, file=file, record=record, reason=reason, skippable=skippable)


@dataclass
class SplitStats:
    """What one split ended up with."""

    images: int = 0
    objects: int = 0
    from_cache: bool = False


@dataclass
class Report:
    """Counts of one conversion: rows per split, skips and fixes by reason, a few examples each.

    ``skipped`` counts records left out under ``on_error="skip"``; ``fixed`` counts repairs made
    in every mode (``clipped_coordinates``, ``zero_area_dropped``).
    """

    source: str = ""
    splits: dict[str, SplitStats] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    fixed: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # -- recording ---------------------------------------------------------------------------
    def _example(self, reason: str, text: str) -> None:
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < MAX_EXAMPLES:
            bucket.append(text)

    def skip(self, error: ConversionError) -> None:
        """Count one skipped record under its reason."""
        self.skipped[error.reason] += 1
        self._example(error.reason, error.format())

    def fix(self, reason: str, where: str) -> None:
        """Count one repaired record (clipped coordinates, dropped zero-area object)."""
        self.fixed[reason] += 1
        self._example(reason, where)

    def merge(self, other: Report) -> None:
        """Add another report's counts (one split's) to this one."""
        self.splits.update(other.splits)
        self.skipped.update(other.skipped)
        self.fixed.update(other.fixed)
        for reason, texts in other.examples.items():
            for text in texts:
                self._example(reason, text)
        self.notes.extend(n for n in other.notes if n not in self.notes)

    # -- totals and text ---------------------------------------------------------------------
    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())

    @property
    def objects(self) -> int:
        return sum(s.objects for s in self.splits.values())

    @property
    def from_cache(self) -> bool:
        """True when every split was loaded from the Arrow cache (nothing was decoded)."""
        return bool(self.splits) and all(s.from_cache for s in self.splits.values())

    def summary(self) -> str:
        """Human summary: images, objects, skipped and fixed by reason."""
        lines = [f"Converted {self.source}" if self.source else "Conversion summary"]
        for name, s in self.splits.items():
            origin = "loaded from Arrow cache" if s.from_cache else "converted"
            lines.append(f"  {name}: {s.images} images, {s.objects} objects ({origin})")
        lines.append(f"  total: {self.images} images, {self.objects} objects")
        if self.skipped:
            lines.append(f"  skipped by reason ({sum(self.skipped.values())} records):")
            lines.extend(self._reason_lines(self.skipped))
        else:
            lines.append("  skipped by reason: none")
        if self.fixed:
            lines.append("  repaired or normalised (in every mode):")
            lines.extend(self._reason_lines(self.fixed))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _reason_lines(self, counts: Counter[str]) -> list[str]:
        out = []
        for reason, n in sorted(counts.items()):
            out.append(f"    {reason}: {n}")
            out.extend(f"      e.g. {t}" for t in self.examples.get(reason, []))
        return out

    # -- persistence (beside the Arrow cache) ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "splits": {k: vars(v) for k, v in self.splits.items()},
            "skipped": dict(self.skipped),
            "fixed": dict(self.fixed),
            "examples": self.examples,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(
            source=d.get("source", ""),
            splits={k: SplitStats(**v) for k, v in d.get("splits", {}).items()},
            skipped=Counter(d.get("skipped", {})),
            fixed=Counter(d.get("fixed", {})),
            examples={k: list(v) for k, v in d.get("examples", {}).items()},
            notes=list(d.get("notes", [])),
        )


class ErrorPolicy:
    """Raise or count a :class:`ConversionError`, depending on ``on_error``."""

    def __init__(self, on_error: str, report: Report) -> None:
        check_on_error(on_error)
        self.on_error = on_error
        self.report = report

    def fail(self, error: ConversionError) -> None:
        """Raise ``error`` (``on_error="raise"`` or unskippable) or count it as a skip."""
        if self.on_error == "raise" or not error.skippable:
            raise error
        self.report.skip(error)


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


# ---------------------------------------------------------------------------------------------
# Reading images and masks
# ---------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike[str], record: str) -> tuple[bytes, int, int]:
    """Encoded bytes to store and the upright (width, height) of an image.

    Read by :func:`sam_hf.data.images.read_for_conversion`, the one image reader: the file's own
    bytes when it is 8-bit RGB/L with no EXIF orientation to apply, else a PNG of the upright
    8-bit RGB pixels (see that module for the rules).
    """
    from sam_hf.data.images import read_for_conversion

    stored = read_for_conversion(path, record)
    return stored.data, stored.width, stored.height


def read_instance_mask(
    path: str | os.PathLike[str], record: str, image_size: tuple[int, int] | None
) -> np.ndarray:
    """Instance-id mask (H, W) uint8/uint16 from a single-channel 8- or 16-bit image.

    ``image_size`` is the (width, height) of the image the mask belongs to; a different size is
    an error rather than a resize, because resizing an id map silently corrupts the instances.
    ``None`` leaves the size check to the caller (the EXIF rule of :mod:`sam_hf.data.images`).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode, size, fmt = im.mode, im.size, im.format
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
    if image_size is not None and tuple(size) != tuple(image_size):
        raise ConversionError(
            f"mask is {size[0]}x{size[1]} (WxH) but its image is {image_size[0]}x{image_size[1]}",
            file=path,
            record=record,
            reason="mask_size_mismatch",
        )
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


# ---------------------------------------------------------------------------------------------
# Fingerprint and Arrow cache
# ---------------------------------------------------------------------------------------------


def _features_digest() -> str:
    return hashlib.sha256(json.dumps(FEATURES.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def file_signature(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime in ns) of each file, sorted; a missing file gets -1s."""
    out = []
    for p in {str(Path(p).absolute()) for p in paths}:
        try:
            st = os.stat(p)
            out.append((p, int(st.st_size), int(st.st_mtime_ns)))
        except OSError:
            out.append((p, -1, -1))
    return sorted(out)


def fingerprint(
    kind: str,
    version: str,
    split: str,
    files: Iterable[str | os.PathLike[str]],
    options: dict[str, Any],
) -> str:
    """Stable id of one split's conversion: inputs' paths, sizes, mtimes, options and versions.

    Identical inputs give the same id in any process, so the Arrow cache is found again;
    touching a file, changing an option or bumping a converter version gives a new one.
    """
    payload = {
        "kind": kind,
        "converter_version": version,
        "convert_version": CONVERT_VERSION,
        "sam_hf": sam_hf.__version__,
        "datasets": datasets.__version__,
        "features": _features_digest(),
        "split": split,
        "options": options,
        "files": file_signature(files),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return f"sam_hf-{kind}-{hashlib.sha256(blob).hexdigest()[:24]}"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The datasets cache folder (``HF_DATASETS_CACHE`` unless given)."""
    return Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE)


#: fingerprint -> times its generator ran in this process (tells a cache hit from a build).
_GENERATOR_RUNS: Counter[str] = Counter()


def run_generator(
    items: Iterable[dict[str, Any]],
    convert_item: ConvertItem,
    *,
    plan_report: dict[str, Any],
    on_error: str,
    report_path: str,
    fingerprint: str,
) -> Iterator[dict[str, Any]]:
    """Body shared by the converters' generators: convert items, count skips, persist the report.

    ``convert_item`` returns a schema row, or ``None`` when the item was skipped (it calls
    ``policy.fail`` for that). Any other exception is wrapped into a :class:`ConversionError`
    naming the item, so even an unforeseen failure says where it happened.
    """
    _GENERATOR_RUNS[fingerprint] += 1
    report = Report.from_dict(plan_report)
    policy = ErrorPolicy(on_error, report)
    for item in items:
        try:
            row = convert_item(item, policy)
        except ConversionError as e:
            policy.fail(e)
            continue
        except Exception as e:  # re-raised with the record it happened in
            error = ConversionError(
                f"unexpected {type(e).__name__}: {e}",
                file=item.get("file"),
                record=item.get("record"),
                reason="unexpected_error",
            )
            error.__cause__ = e  # keep the original traceback for bug reports
            policy.fail(error)
            continue
        if row is not None:
            yield row
    save_report(report, report_path)


def save_report(report: Report, path: str | os.PathLike[str]) -> None:
    """Write a report json atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=1, sort_keys=True))
    os.replace(tmp, path)


def _conversion_error_in(exc: BaseException) -> ConversionError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ConversionError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


#: A converter's per-item function: planned item -> schema row, or None when skipped.
ConvertItem = Callable[[dict[str, Any], ErrorPolicy], dict[str, Any] | None]


def build_planned_splits(
    plans: dict[str, tuple[list[dict[str, Any]], Report]],
    convert_item: ConvertItem,
    *,
    source: str | os.PathLike[str],
    kind: str,
    version: str,
    files_of: Callable[[dict[str, Any]], list[str]],
    val_fraction: float,
    seed: int,
    on_error: str,
    report: Report,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, datasets.Dataset | None]:
    """Shared tail of the folder converters (MinneApple, per-image JSON).

    Carves a seeded ``validation`` split from ``train`` (``val_fraction``) unless the tree has
    its own, refuses an empty dataset, then builds each planned split through
    :func:`build_split` (so each split has its own Arrow cache entry). ``files_of(item)``
    lists the files an item reads; their sizes and mtimes enter the cache fingerprint.
    """
    if "validation" in plans:
        if val_fraction:
            report.notes.append(
                "validation split taken from its own folder; val_fraction not applied"
            )
    elif val_fraction and "train" in plans:
        train_items, train_report = plans["train"]
        held = seeded_split([it["image_id"] for it in train_items], val_fraction, seed)
        if held:
            plans["train"] = (
                [it for it in train_items if it["image_id"] not in held],
                train_report,
            )
            plans["validation"] = ([it for it in train_items if it["image_id"] in held], Report())
    if not any(items for items, _ in plans.values()) and not any(
        r.skipped for _, r in plans.values()
    ):
        raise ConversionError(
            "empty dataset: no images found in any split",
            file=source,
            reason="empty_dataset",
            skippable=False,
        )
    options = {"val_fraction": val_fraction, "seed": seed, "source": str(Path(source).absolute())}
    built: dict[str, datasets.Dataset | None] = {}
    for name in ("train", "validation", "test"):
        if name not in plans:
            continue
        items, plan_report = plans[name]
        built[name], split_report = build_split(
            convert_item,
            kind=kind,
            version=version,
            split=name,
            items=items,
            files=[f for it in items for f in files_of(it)],
            options=options,
            on_error=on_error,
            plan_report=plan_report,
            cache_dir=cache_dir,
        )
        report.merge(split_report)
    return built


def build_split(
    convert_item: ConvertItem,
    *,
    kind: str,
    version: str,
    split: str,
    items: list[dict[str, Any]],
    files: Iterable[str | os.PathLike[str]],
    options: dict[str, Any],
    on_error: str,
    plan_report: Report | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[datasets.Dataset | None, Report]:
    """Build (or load from the Arrow cache) one split; ``None`` if every item was skipped.

    ``convert_item`` (a converter's top-level function, see :func:`run_generator`) turns each
    planned item into a row inside :func:`run_generator`. The fingerprint goes to
    ``from_generator`` as the dataset id, so datasets hashes neither the (possibly large) items
    nor the function.
    """
    check_on_error(on_error)
    if not items:  # nothing survived planning: no generator run, no empty cache entry
        report = Report.from_dict((plan_report or Report()).to_dict())
        report.splits = {split: SplitStats(0, 0, False)}
        return None, report
    fp = fingerprint(kind, version, split, files, {**options, "on_error": on_error})
    cache = resolve_cache_dir(cache_dir)
    report_path = cache / "sam_hf_reports" / f"{fp}.json"
    runs_before = _GENERATOR_RUNS[fp]
    gen_kwargs = {
        # a tuple, not a list: datasets splits list-valued gen_kwargs into one shard (and one
        # generator call) per element, which would split the report too
        "items": tuple(items),
        "convert_item": convert_item,
        "on_error": on_error,
        "plan_report": (plan_report or Report()).to_dict(),
        "report_path": str(report_path),
        "fingerprint": fp,
    }
    dataset: datasets.Dataset | None
    try:
        dataset = datasets.Dataset.from_generator(
            run_generator,
            features=FEATURES,
            gen_kwargs=gen_kwargs,
            cache_dir=str(cache),
            fingerprint=fp,
            split=datasets.NamedSplit(split),
            writer_batch_size=WRITER_BATCH_SIZE,
        )
    except Exception as e:
        err = _conversion_error_in(e)
        if err is not None:  # drop datasets' wrapper; keep the cause of an unexpected error
            raise err from err.__cause__
        if isinstance(e, ValueError) and "corresponds to no data" in str(e):
            dataset = None  # every item was skipped: an empty split
        else:
            raise
    from_cache = _GENERATOR_RUNS[fp] == runs_before
    if report_path.is_file():
        report = Report.from_dict(json.loads(report_path.read_text()))
    else:  # cache built by another tool or the report was deleted: counts of rows still hold
        report = Report(notes=[f"{split}: skip counts unavailable (report missing from the cache)"])
    if dataset is None:
        stats = SplitStats(0, 0, from_cache)
    else:
        lengths = pc.list_value_length(dataset.data.column("objects"))
        n_obj = pc.sum(lengths).as_py() or 0
        stats = SplitStats(len(dataset), int(n_obj), from_cache)
    report.splits = {split: stats}
    return dataset, report


def seeded_split(names: list[str], fraction: float, seed: int) -> set[str]:
    """Names drawn (without replacement, seeded) for a held-out split carved from ``names``.

    Order-independent: the names are sorted first, so the same files give the same split
    whatever order the file system lists them in. At least one name is drawn when the fraction
    is positive and two or more names exist; at least one is always left behind.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    names = sorted(names)
    n = len(names)
    if fraction == 0.0 or n < 2:
        return set()
    k = min(max(int(round(fraction * n)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return {names[i] for i in order[:k]}


def finish(
    splits: dict[str, datasets.Dataset | None], report: Report, source: str | os.PathLike[str]
) -> datasets.DatasetDict:
    """Assemble the DatasetDict, dropping splits that ended up empty; empty overall is an error."""
    kept = {name: ds for name, ds in splits.items() if ds is not None and len(ds) > 0}
    for name in splits:
        if name not in kept:
            report.notes.append(f"split {name!r} is empty after skipping and was left out")
    if not kept:
        raise ConversionError(
            "empty dataset: no image could be converted"
            + (" (every record was skipped)" if report.skipped else ""),
            file=source,
            reason="empty_dataset",
            skippable=False,
        )
    return datasets.DatasetDict(kept)


# ---------------------------------------------------------------------------------------------
# Output folders: ownership marker, atomic replace, leftovers of killed runs
# ---------------------------------------------------------------------------------------------

#: Written into every folder a command creates: the command, the sam_hf version, the time and
#: each file and folder it wrote (files with size and mtime, so later edits are noticed). A
#: folder is replaced without ``--overwrite`` only when this marker shows it is the same
#: command's output, untouched and with nothing added.
OUTPUT_MARKER = ".sam_hf_output.json"

#: ``--overwrite`` of every command that writes a folder.
OVERWRITE_HELP = (
    "replace an existing output folder that this command did not write (or that holds files it"
    " did not write): only sam_hf's own outputs in it are replaced or deleted, every other file"
    " is kept, and a file in the way of an output is refused. Without it, only an empty folder"
    f" or this command's own untouched earlier output (see its {OUTPUT_MARKER}) is replaced"
)
_OVERWRITE_HINT = "pass --overwrite to replace only sam_hf's outputs in it (other files are kept)"

#: What follows ``.<name>.`` in the name of a leftover beside output ``<name>``.
_LEFTOVER = re.compile(r"(tmp|old)-(?:(\d+)-)?[A-Za-z0-9_]+")


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _show(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _default_dir_mode() -> int:
    """Permissions a plain ``mkdir`` would give (``mkdtemp`` makes private 0700 folders)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def make_temp_beside(out: Path) -> Path:
    """An empty folder ``.<name>.tmp-<pid>-<random>`` next to ``out`` (same file system, so the
    final rename is atomic; the pid tells :func:`clean_leftovers` whether its writer is alive)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    os.chmod(tmp, _default_dir_mode())
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out`` by renames only.

    A previous ``out`` is first renamed to ``.<name>.old-<pid>-<random>`` and deleted only once
    ``tmp`` is in place; a run killed between the two renames leaves that folder, which the
    next run renames back (:func:`clean_leftovers`). Callers decide whether ``out`` may go.
    """
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (leftovers name the pid that wrote them)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(
    out: str | os.PathLike[str], notify: Callable[[str], None] = _note
) -> list[str]:
    """Tidy what killed runs left beside ``out``; return the notes (also passed to ``notify``).

    Only names this module makes are touched: ``.<name>.tmp-*`` folders (an unfinished write:
    deleted), ``.<name>.old-*`` folders (a previous output moved aside: renamed back when
    ``out`` is missing, else deleted) and ``<out>/.sam_hf_output.json.tmp-*`` files. Names
    carrying the pid of a process that is still running are left alone and reported.
    """
    out = Path(out)
    notes: list[str] = []

    def tell(message: str) -> None:
        notes.append(message)
        notify(message)

    def stale(pid: str | None, name: str) -> bool:
        if pid is None:  # written before pids were part of the name
            return True
        if int(pid) == os.getpid():  # our own write in progress
            return False
        if pid_alive(int(pid)):
            tell(f"left {out.parent / name} alone: process {pid} may still be writing it")
            return False
        return True

    prefix = f".{out.name}."
    tmps: list[Path] = []
    olds: list[Path] = []
    if out.parent.is_dir():
        for path in sorted(out.parent.iterdir()):
            if not path.name.startswith(prefix):
                continue
            m = _LEFTOVER.fullmatch(path.name[len(prefix) :])
            if m and stale(m[2], path.name):
                (tmps if m[1] == "tmp" else olds).append(path)
    if olds and not (out.exists() or out.is_symlink()):
        newest = max(olds, key=lambda p: p.stat().st_mtime_ns)
        os.rename(newest, out)
        olds.remove(newest)
        tell(f"restored {out} from {newest.name}, left by an interrupted run")
    for path in tmps + olds:
        _remove(path)
        tell(f"removed {path}, left by an interrupted run")
    if out.is_dir() and not out.is_symlink():
        for path in out.glob(f"{OUTPUT_MARKER}.tmp-*"):
            m = re.fullmatch(r"(\d+)-\w+", path.name[len(OUTPUT_MARKER) + 5 :])
            if m and stale(m[1], path.name):
                path.unlink(missing_ok=True)
    return notes


def _walk(root: Path) -> tuple[dict[str, os.stat_result], set[str]]:
    """Everything under ``root``: files (any non-folder; links are not followed) and folders,
    as posix paths relative to ``root``."""
    files: dict[str, os.stat_result] = {}
    dirs: set[str] = set()
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel) as entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    dirs.add(path)
                    stack.append(path)
                else:
                    files[path] = entry.stat(follow_symlinks=False)
    return files, dirs


def _ancestors(rel: str) -> Iterator[str]:
    parts = rel.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _write_marker(folder: Path, command: str, files: dict[str, Any], dirs: Iterable[str]) -> None:
    doc = {
        "written_by": "sam_hf",
        "command": command,
        "sam_hf_version": sam_hf.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": all(v is not None for v in files.values()),
        "files": dict(sorted(files.items())),
        "dirs": sorted(dirs),
    }
    tmp = folder / f"{OUTPUT_MARKER}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, folder / OUTPUT_MARKER)


def _file_records(files: dict[str, os.stat_result]) -> dict[str, Any]:
    return {
        rel: {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        for rel, st in files.items()
        if rel != OUTPUT_MARKER
    }


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of a folder sam_hf wrote, or None (absent or unreadable: not ours)."""
    try:
        doc = json.loads((Path(folder) / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("written_by") != "sam_hf"
        or not isinstance(doc.get("command"), str)
        or not isinstance(doc.get("files"), dict)
        or not isinstance(doc.get("dirs", []), list)
    ):
        return None
    return doc


@dataclass
class _Found:
    """What is at an output path, seen from the command about to write it."""

    kind: str  # absent | not_dir | empty | marked | unmarked
    writer: str | None = None
    complete: bool = True
    ours: set[str] = field(default_factory=set)  # files we may replace or delete
    our_dirs: set[str] = field(default_factory=set)
    extras: list[str] | None = None  # files/folders we did not write (None: not listed)
    changed: list[str] = field(default_factory=list)


def _inspect(out: Path, owned: Callable[[str], bool] | None) -> _Found:
    if not (out.exists() or out.is_symlink()):
        return _Found("absent")
    if not out.is_dir() or out.is_symlink():
        return _Found("not_dir")
    with os.scandir(out) as entries:
        if next(entries, None) is None:
            return _Found("empty")
    marker = read_marker(out)
    if marker is None and owned is None:
        return _Found("unmarked")  # not listed: a folder that is not ours may be huge
    files, dirs = _walk(out)
    listed = marker["files"] if marker else {}
    found = _Found("marked" if marker else "unmarked")
    if marker:
        found.writer = marker["command"]
        found.complete = bool(marker.get("complete", True))
        found.our_dirs = {d for d in marker.get("dirs", []) if isinstance(d, str)}
    for rel, st in files.items():
        if rel == OUTPUT_MARKER and marker:
            continue
        if rel in listed:
            found.ours.add(rel)
            rec = listed[rel]
            if not isinstance(rec, dict) or (rec.get("size"), rec.get("mtime_ns")) != (
                st.st_size,
                st.st_mtime_ns,
            ):
                found.changed.append(rel)
        elif owned is not None and owned(rel):
            found.ours.add(rel)
    for rel in found.ours | set(listed):
        found.our_dirs.update(_ancestors(rel))
    extra_files = sorted(set(files) - found.ours - ({OUTPUT_MARKER} if marker else set()))
    extra_dirs = sorted(
        d + "/"
        for d in dirs - found.our_dirs
        if not any(f.startswith(d + "/") for f in extra_files)
    )
    found.extras = extra_files + extra_dirs
    found.changed.sort()
    return found


def _reasons(found: _Found, command: str) -> list[str]:
    """Why ``command`` may not simply replace the folder; empty when it may."""
    if found.kind in ("absent", "empty"):
        return []
    if found.kind == "unmarked":
        if found.extras == []:  # every file matches what ``command`` writes (``owned``)
            return []
        return [f"it was not written by {command} (no {OUTPUT_MARKER} in it)"]
    reasons = []
    if found.writer != command:
        reasons.append(f"it was written by {found.writer}, not {command}")
    if not found.complete:
        reasons.append("an earlier run into it was interrupted")
    if found.extras:
        reasons.append(f"it holds files {found.writer} did not write ({_show(found.extras)})")
    if found.changed and found.complete:
        reasons.append(f"files changed since {found.writer} wrote them ({_show(found.changed)})")
    return reasons


def _blocked(out: Path, found: _Found, files: Iterable[str], dirs: Iterable[str]) -> list[str]:
    """Entries that are not ours and sit where this command writes (even --overwrite keeps them)."""
    blocked = set()
    for rel in files:
        if rel == OUTPUT_MARKER and found.kind == "marked":
            continue  # our own marker: rewritten last
        path = out / rel
        if rel not in found.ours and (path.exists() or path.is_symlink()):
            blocked.add(rel)
        for anc in _ancestors(rel):
            p = out / anc
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                blocked.add(anc)
    for rel in dirs:
        p = out / rel
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            blocked.add(rel)
    return sorted(blocked)


def _refuse(out: Path, detail: str) -> ConversionError:
    return ConversionError(detail, file=out, reason="output_exists", skippable=False)


def _check(
    out: Path,
    found: _Found,
    command: str,
    overwrite: bool,
    flag: str,
    files: Iterable[str],
    dirs: Iterable[str] = (),
) -> None:
    if found.kind == "not_dir":
        raise _refuse(out, f"exists and is not a folder; choose another {flag}")
    reasons = _reasons(found, command)
    if reasons and not overwrite:
        raise _refuse(
            out,
            f"refusing to replace it: {'; '.join(reasons)}; {_OVERWRITE_HINT}, or choose"
            f" another {flag}",
        )
    blocked = _blocked(out, found, files, dirs) if reasons else []
    if blocked:
        raise _refuse(
            out,
            f"refusing to overwrite {_show(blocked)}: not written by sam_hf, and --overwrite"
            f" never replaces such files; move {'it' if len(blocked) == 1 else 'them'} away or"
            f" choose another {flag}",
        )


def resolve_output(out: str | os.PathLike[str]) -> Path:
    """The absolute output path; a symlink is followed (its target is written, the link kept)."""
    out = Path(out).absolute()
    return out.resolve() if out.is_symlink() else out


def check_output(
    out: str | os.PathLike[str],
    command: str,
    *,
    overwrite: bool = False,
    flag: str = "--out",
    writes: Iterable[str] = (),
    owned: Callable[[str], bool] | None = None,
    notify: Callable[[str], None] = _note,
) -> Path:
    """Before any work: may ``command`` write ``out``? Returns the absolute path or raises.

    Cleans the leftovers of killed runs first (:func:`clean_leftovers`). Without ``overwrite``
    an existing folder must be empty or this command's untouched output (its marker lists
    every file, with unchanged size and mtime); anything else raises :class:`ConversionError`
    (one line naming the folder, the reason and ``--overwrite``). With ``overwrite`` only
    files that would have to be replaced although sam_hf did not write them still raise;
    ``writes`` names files known in advance (``README.md``) so that happens before the work.
    ``owned(rel)`` marks files of a folder without marker as this command's (the synthetic
    orchard, whose trees must stay byte-identical, recognises its files by name).
    """
    path = resolve_output(out)
    clean_leftovers(path, notify)
    _check(path, _inspect(path, owned), command, overwrite, flag, writes)
    return path


def install_output(
    tmp: Path,
    out: Path,
    command: str,
    *,
    overwrite: bool = False,
    flag: str = "--out",
    owned: Callable[[str], bool] | None = None,
    marker: bool = True,
    notify: Callable[[str], None] = _note,
) -> None:
    """Put the finished folder ``tmp`` (same file system) at ``out``, checked as in
    :func:`check_output` against what ``out`` holds now.

    ``out`` absent, empty or ours: one atomic rename (:func:`replace_dir`). With
    ``overwrite``, a folder that also holds files sam_hf did not write is never moved or
    deleted: each of our files is renamed into it (atomic per file, not as a whole), our
    files that this run no longer writes are deleted, everything else stays, and a note
    says so. The marker (``marker=True``) lists exactly the files this run wrote.
    """
    out = resolve_output(out)
    clean_leftovers(out, notify)
    if marker:
        files, dirs = _walk(tmp)
        _write_marker(tmp, command, _file_records(files), dirs)
    files, dirs = _walk(tmp)
    found = _inspect(out, owned)
    _check(out, found, command, overwrite, flag, files, dirs)
    if found.kind in ("absent", "empty") or found.extras == []:
        replace_dir(tmp, out)  # nothing in ``out`` but our own outputs: swap it whole
        return
    # --overwrite into a folder holding files we did not write: merge, never move the folder.
    new = sorted(f for f in files if f != OUTPUT_MARKER)
    if marker:  # first claim what we are about to write, so a killed merge can be finished
        _write_marker(out, command, dict.fromkeys(sorted(found.ours | set(new))), dirs)
    for rel in new:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, out / rel)
    for rel in sorted(found.ours - set(new)):
        (out / rel).unlink(missing_ok=True)
        for anc in reversed(list(_ancestors(rel))):  # prune folders that only held it
            if anc not in found.our_dirs or anc in dirs:
                break
            try:
                (out / anc).rmdir()
            except OSError:
                break
    if marker:
        _write_marker(out, command, _file_records({r: (out / r).stat() for r in new}), dirs)
    shutil.rmtree(tmp, ignore_errors=True)
    kept = found.extras if found.extras is not None else ["the files that were there"]
    notify(f"--overwrite: wrote {command}'s outputs into {out} and kept {_show(kept)}")


@contextlib.contextmanager
def atomic_output(
    out: str | os.PathLike[str],
    command: str,
    *,
    overwrite: bool = False,
    flag: str = "--out",
    writes: Iterable[str] = (),
    owned: Callable[[str], bool] | None = None,
    marker: bool = True,
    notify: Callable[[str], None] = _note,
) -> Iterator[Path]:
    """Write a folder atomically: check ``out`` now, yield an empty temporary folder beside it,
    and on success install it with :func:`install_output`; on failure remove it.

    The one place output folders are written (converters, COCO-text export, synthetic orchard,
    archive extraction).
    """
    path = check_output(
        out, command, overwrite=overwrite, flag=flag, writes=writes, owned=owned, notify=notify
    )
    tmp = make_temp_beside(path)
    try:
        yield tmp
        install_output(
            tmp,
            path,
            command,
            overwrite=overwrite,
            flag=flag,
            owned=owned,
            marker=marker,
            notify=notify,
        )
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_atomically(
    dataset: datasets.DatasetDict | datasets.Dataset,
    out: str | os.PathLike[str],
    extra_files: dict[str, str] | None = None,
    *,
    command: str = "save_atomically",
    overwrite: bool = False,
) -> Path:
    """``save_to_disk`` into a temporary folder beside ``out``, then rename it into place.

    ``extra_files`` maps file names to text written next to the dataset (the data card). An
    existing ``out`` is replaced only as :func:`install_output` allows, so a typo in ``--out``
    cannot delete unrelated files.
    """
    with atomic_output(
        out, command, overwrite=overwrite, writes=[*(extra_files or {}), "dataset_dict.json"]
    ) as tmp:
        dataset.save_to_disk(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return resolve_output(out)


# ---------------------------------------------------------------------------------------------
# Command-line plumbing shared by scripts/prepare_*.py
# ---------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--on-error``, ``--cache-dir`` and ``--overwrite``, spelled the same in every prepare script."""
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="raise",
        help="raise: stop at the first bad record (default); skip: leave bad records out, count"
        " them and list them in the summary",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="datasets cache folder for the Arrow files (default: HF_DATASETS_CACHE)",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def run_cli(run: Callable[[], tuple[Report, Path]]) -> int:
    """Run a conversion for a script: print its summary, or the error; return the exit code.

    Bad input exits with 2 and the :class:`ConversionError` message, which names the file and
    the record; nothing is left at the output path (saves are atomic).
    """
    start = time.perf_counter()
    try:
        report, out = run()
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"saved to {out} in {time.perf_counter() - start:.2f} s")
    return 0
