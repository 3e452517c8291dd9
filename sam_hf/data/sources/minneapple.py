"""MinneApple (instance-id PNG masks) -> the one schema.

Layouts accepted under ``root`` (``detection/`` is how ``detection.tar.gz`` unpacks):

- ``root/{train,test}/images/*.png`` with ``masks/*.png`` of the same names
- ``root/detection/{train,test}/...``
- a split with ``images/`` only (MinneApple's test split): rows with no objects
- ``root/{validation,val}/...``: used as the validation split instead of carving one
- ``root/test_data/segmentation/{images,masks}`` (``test_data.zip``, the test masks released
  later): used for the test split when the test split found otherwise has no masks

Masks are single-channel 8- or 16-bit images, 0 = background and 1..N = instance ids. Every id
present becomes exactly one object (ascending id order) whose RLE decodes to ``mask == id``.
The official archives are downloaded by :mod:`sam_hf.data.sources.minneapple_download`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from sam_hf.data import rle
from sam_hf.data.build import build_planned_splits, finish
from sam_hf.data.cards.dataset_card import check_prepared_output, save_prepared
from sam_hf.data.checks import image_value, list_images, read_instance_mask
from sam_hf.data.report import ConversionError, ErrorPolicy, Report, check_on_error
from sam_hf.data.schema import make_object
from sam_hf.data.stored_image import orient_label_map, read_for_conversion

#: Names the writer in the ``.sam_hf_output.json`` marker of a prepared folder.
PREPARE_COMMAND = "prepare_mineapple"

#: Bump when the rows this converter writes change for the same files.
VERSION = "minneapple-2"

CATEGORY = "apple"
SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}


@dataclass(frozen=True)
class SplitSource:
    """Where one split's files are: ``images`` and, when annotated, ``masks``."""

    name: str
    images: Path
    masks: Path | None


def find_splits(root: str | os.PathLike[str]) -> dict[str, SplitSource]:
    """Locate the split folders of a MinneApple tree (see the module docstring for layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(
            "source folder not found", file=root, reason="missing_file", skippable=False
        )
    found: dict[str, SplitSource] = {}
    for split, names in SPLIT_DIRS.items():
        for base in (root, root / "detection"):
            hit = next((base / n for n in names if (base / n / "images").is_dir()), None)
            if hit is not None:
                masks = hit / "masks"
                found[split] = SplitSource(split, hit / "images", masks if masks.is_dir() else None)
                break
    extra = root / "test_data" / "segmentation"
    if (extra / "images").is_dir() and (extra / "masks").is_dir():
        if "test" not in found or found["test"].masks is None:
            found["test"] = SplitSource("test", extra / "images", extra / "masks")
    if not found:
        hint = ""
        if (root / "images").is_dir():
            hint = " (found images/ directly under it: move it to <root>/train/ or <root>/test/)"
        raise ConversionError(
            "no MinneApple split found: expected <root>/{train,test}/images/ (optionally with"
            " masks/) or <root>/detection/{train,test}/images/" + hint,
            file=root,
            reason="empty_dataset",
            skippable=False,
        )
    return found


def _plan_split(source: SplitSource, policy: ErrorPolicy) -> list[dict[str, Any]]:
    """Pair images with masks by name; duplicates, orphan masks and missing masks are errors."""
    items: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for image in list_images(source.images):
        stem = image.stem
        if stem in seen:
            policy.fail(
                ConversionError(
                    f"duplicate image id {stem!r} (also {seen[stem].name})",
                    file=image,
                    record=f"image {stem}",
                    reason="duplicate_image_id",
                )
            )
            continue
        seen[stem] = image
        mask = None
        if source.masks is not None:
            candidates = [source.masks / image.name, source.masks / f"{stem}.png"]
            mask = next((m for m in candidates if m.is_file()), None)
            if mask is None:
                policy.fail(
                    ConversionError(
                        f"no mask {source.masks / image.name} for this image",
                        file=image,
                        record=f"image {stem}",
                        reason="missing_mask",
                    )
                )
                continue
        items.append(
            {
                "image": str(image),
                "mask": None if mask is None else str(mask),
                "image_id": stem,
                "file": str(image),
                "record": f"image {stem}",
            }
        )
    if source.masks is not None:
        for mask in list_images(source.masks):
            if mask.stem not in seen:
                policy.fail(
                    ConversionError(
                        f"mask has no image in {source.images}",
                        file=mask,
                        record=f"image id {mask.stem}",
                        reason="unknown_image_id",
                    )
                )
    return items


def masks_to_objects(label_map: np.ndarray) -> list[dict[str, Any]]:
    """One schema object per non-zero id of an instance-id map, in ascending id order."""
    rles = rle.encode_instances(label_map)
    areas = rle.area(rles)
    boxes = rle.to_bbox(rles)
    return [
        make_object(r, list(b), float(a), CATEGORY, noun_phrase=CATEGORY)
        for r, a, b in zip(rles, areas, boxes)
    ]


def _convert_item(item: dict[str, Any], policy: ErrorPolicy) -> dict[str, Any]:
    stored = read_for_conversion(item["image"], item["record"])
    objects: list[dict[str, Any]] = []
    if item["mask"] is not None:
        # the mask's size says which grid it was drawn on (sam_hf.data.images: EXIF rule)
        label_map = read_instance_mask(item["mask"], item["record"])
        frame = stored.masks_follow(
            (label_map.shape[1], label_map.shape[0]), file=item["mask"], record=item["record"]
        )
        objects = masks_to_objects(orient_label_map(label_map, stored, frame))
    stored.count(policy.report)
    return {
        "image": image_value(stored.data),
        "image_id": item["image_id"],
        "width": stored.width,
        "height": stored.height,
        "objects": objects,
        "negative_phrases": [],
    }


def convert_minneapple(
    source: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    report: Report | None = None,
) -> datasets.DatasetDict:
    """MinneApple tree -> ``DatasetDict`` with splits ``train`` / ``validation`` / ``test``.

    ``validation`` is carved from ``train`` (``val_fraction`` of its images, drawn with
    ``seed``) unless the tree has its own validation folder. ``report``, if given, receives the
    counts (per split, skips, fixes) for the summary.
    """
    check_on_error(on_error)
    report = report if report is not None else Report()
    report.source = str(source)
    sources = find_splits(source)
    plans: dict[str, tuple[list[dict[str, Any]], Report]] = {}
    for name, src in sources.items():
        plan_report = Report()
        plans[name] = (_plan_split(src, ErrorPolicy(on_error, plan_report)), plan_report)
    built = build_planned_splits(
        plans,
        _convert_item,
        source=source,
        kind="minneapple",
        version=VERSION,
        files_of=lambda it: [it["image"]] + ([it["mask"]] if it["mask"] else []),
        val_fraction=val_fraction,
        seed=seed,
        on_error=on_error,
        report=report,
        cache_dir=cache_dir,
    )
    return finish(built, report, source)


def prepare_minneapple(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    card: str = "minneapple",
    overwrite: bool = False,
) -> tuple[Report, Path]:
    """Convert a MinneApple tree and save it (``save_to_disk``) with its card as README.md.

    ``card="synthetic_orchard"`` for the synthetic orchard written in the MinneApple layout.
    An existing ``out`` that this command did not write is refused before converting, unless
    ``overwrite`` (which still never deletes files sam_hf did not write).
    """
    check_prepared_output(out, PREPARE_COMMAND, overwrite=overwrite)
    report = Report()
    dataset = convert_minneapple(
        source,
        val_fraction=val_fraction,
        seed=seed,
        on_error=on_error,
        cache_dir=cache_dir,
        report=report,
    )
    return report, save_prepared(
        dataset, out, card, report, command=PREPARE_COMMAND, overwrite=overwrite
    )
