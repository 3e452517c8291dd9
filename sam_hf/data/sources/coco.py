"""COCO json with text (``noun_phrase`` per annotation) -> the one schema.

Reading (:func:`convert_coco_text`): polygons, compressed and uncompressed RLE, ``iscrowd``;
per annotation an optional ``noun_phrase`` and ``attributes`` mapping; per image an optional
``negative_phrases`` list (our extension: phrases known to be absent, which SAM3's presence
head learns from). Masks are built exactly as pycocotools' ``COCO.annToMask`` builds them, and
objects keep the file's annotation order. The per-image JSON and SA-Co readers share the
geometry code here. Writing COCO-text is :mod:`sam_hf.data.sources.coco_export`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets

from sam_hf.data import rle
from sam_hf.data.build import build_split, finish
from sam_hf.data.cards.dataset_card import check_prepared_output, save_prepared
from sam_hf.data.checks import (
    check_attributes,
    check_bbox,
    check_polygons,
    clip_bbox,
    image_value,
    load_json,
    polygons_outside,
)
from sam_hf.data.images import ImageInfo
from sam_hf.data.report import ConversionError, ErrorPolicy, Report, check_on_error
from sam_hf.data.schema import make_object
from sam_hf.data.stored_image import orient_object, read_for_conversion

#: Names the writer in the ``.sam_hf_output.json`` marker of a prepared folder.
PREPARE_COMMAND = "prepare_coco_text"

#: Bump when the rows this converter writes change for the same files.
VERSION = "coco-1"

NOUN_PHRASE_FLAG = "--noun-phrase-from-category"


# ---------------------------------------------------------------------------------------------
# Segmentation of one annotation, exactly as pycocotools' annToRLE
# ---------------------------------------------------------------------------------------------


def check_segmentation(segm: Any, file: str | Path, record: str) -> dict[str, Any]:
    """Structural check of a COCO ``segmentation``; returns ``{"polygons": ...}`` or ``{"rle": ...}``.

    Done while planning (no pixels needed) so that a malformed file fails before any image is
    decoded.
    """
    if isinstance(segm, list):
        return {"polygons": check_polygons(segm, file, record)}
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size = segm["size"]
        if not (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and v > 0 for v in size)
        ):
            raise ConversionError(
                f"RLE size must be [height, width], got {size!r}",
                file=file,
                record=record,
                reason="bad_segmentation",
            )
        counts = segm["counts"]
        if isinstance(counts, list):
            if (
                not all(isinstance(c, int) and c >= 0 for c in counts)
                or sum(counts) != size[0] * size[1]
            ):
                raise ConversionError(
                    f"uncompressed RLE counts must be non-negative ints summing to h*w = {size[0] * size[1]}",
                    file=file,
                    record=record,
                    reason="bad_segmentation",
                )
        elif not isinstance(counts, str):
            raise ConversionError(
                "RLE counts must be a string (compressed) or a list of ints (uncompressed)",
                file=file,
                record=record,
                reason="bad_segmentation",
            )
        return {"rle": {"size": [int(size[0]), int(size[1])], "counts": counts}}
    raise ConversionError(
        "segmentation must be polygons (list of lists) or an RLE {size, counts}",
        file=file,
        record=record,
        reason="bad_segmentation" if segm not in (None, [], {}) else "missing_segmentation",
    )


def segmentation_to_rle(
    segm: dict[str, Any], height: int, width: int, file: str, record: str
) -> dict[str, Any]:
    """Checked segmentation (from :func:`check_segmentation`) -> compressed RLE of an h x w image."""
    if "polygons" in segm:
        return rle.from_polygons(segm["polygons"], height, width)
    r = segm["rle"]
    if list(r["size"]) != [height, width]:
        raise ConversionError(
            f"RLE size {r['size']} (HxW) differs from its image {height}x{width}",
            file=file,
            record=record,
            reason="mask_size_mismatch",
        )
    if isinstance(r["counts"], list):
        return rle.from_uncompressed(r)
    try:
        rle.decode(r)  # a corrupt counts string must fail here, naming the record
    except Exception as e:  # noqa: BLE001 - pycocotools raises assorted types
        raise ConversionError(
            f"undecodable compressed RLE ({e})", file=file, record=record, reason="bad_segmentation"
        ) from None
    return {"size": [height, width], "counts": r["counts"]}


def build_object(
    ann: dict[str, Any],
    height: int,
    width: int,
    report: Report,
    file: str,
) -> dict[str, Any] | None:
    """Planned annotation -> schema object; ``None`` (dropped and counted) if its area is zero.

    Geometry outside the image is clipped (polygons by rasterisation, as pycocotools does;
    boxes explicitly) and counted. ``bbox`` is the file's box when it has one (clipped), else
    the mask's tight box; ``area`` is always the mask's pixel count, so it agrees with the mask.
    """
    record = ann["record"]
    segm = ann["segmentation"]
    mask_rle = segmentation_to_rle(segm, height, width, file, record)
    clipped = "polygons" in segm and polygons_outside(segm["polygons"], width, height)
    area = float(rle.area([mask_rle])[0])
    if area <= 0:
        report.fix("zero_area_dropped", f"{file}: {record}")
        return None
    if ann.get("bbox") is not None:
        bbox, changed = clip_bbox(ann["bbox"], width, height)
        clipped = clipped or changed
    else:
        bbox = [float(v) for v in rle.to_bbox([mask_rle])[0]]
    if clipped:
        report.fix("clipped_coordinates", f"{file}: {record}")
    return make_object(
        mask_rle,
        bbox,
        area,
        ann["category"],
        noun_phrase=ann["noun_phrase"],
        attributes=ann["attributes"],
        iscrowd=ann["iscrowd"],
    )


def _mask_size(item: dict[str, Any], info: ImageInfo) -> tuple[int | None, int | None] | None:
    """(width, height) the annotations were made on: the declared size, else the first RLE
    size that is the image's stored or displayed size (others fail on their own), else None."""
    declared = item.get("size")
    if declared and any(v is not None for v in declared):
        return declared[0], declared[1]
    for ann in item["annotations"]:
        if "rle" in ann["segmentation"]:
            h, w = ann["segmentation"]["rle"]["size"]
            if (w, h) in (info.raw_size, info.displayed_size):
                return w, h
    return None


def convert_planned_image(item: dict[str, Any], policy: ErrorPolicy) -> dict[str, Any] | None:
    """Planned image (its annotations attached) -> schema row. Shared with the SA-Co reader.

    The annotations' size says which grid they were drawn on (the EXIF rule of
    :mod:`sam_hf.data.images`); objects on the stored grid are rotated with the image, which is
    stored upright.
    """
    stored = read_for_conversion(item["image"], item["record"])
    frame = "displayed"
    size = _mask_size(item, stored.info)
    if size is not None or item["annotations"]:
        declared = item.get("size") or [None, None]
        frame = stored.masks_follow(
            size,
            file=item["file"],
            record=item["record"],
            lead=f"annotations declare {declared[0]}x{declared[1]} (WxH) but the image is",
        )
    width, height = stored.info.raw_size if frame == "raw" else stored.info.displayed_size
    objects = []
    for ann in item["annotations"]:
        try:
            obj = build_object(ann, height, width, policy.report, item["file"])
        except ConversionError as e:
            policy.fail(e)
            continue
        if obj is not None:
            objects.append(orient_object(obj, stored, frame))
    stored.count(policy.report)
    return {
        "image": image_value(stored.data),
        "image_id": item["image_id"],
        "width": stored.width,
        "height": stored.height,
        "objects": objects,
        "negative_phrases": item.get("negative_phrases", []),
    }


# ---------------------------------------------------------------------------------------------
# Planning: parse the json, check what needs no pixels
# ---------------------------------------------------------------------------------------------


def _as_list(coco: dict[str, Any], key: str, file: Path, required: bool) -> list[Any]:
    value = coco.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ConversionError(
            f"top-level {key!r} must be a list", file=file, reason="bad_record", skippable=False
        )
    return value


def _phrases(value: Any, file: Path, record: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ConversionError(
            "negative_phrases must be a list of strings",
            file=file,
            record=record,
            reason="bad_record",
        )
    return [p.strip() for p in value if p.strip()]


def plan_coco(
    annotations: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    *,
    noun_phrase_from_category: bool,
    policy: ErrorPolicy,
) -> list[dict[str, Any]]:
    """Parse a COCO-text json into per-image items (annotations attached, file order kept)."""
    file = Path(annotations)
    coco = load_json(file)
    if not isinstance(coco, dict):
        raise ConversionError(
            "a COCO file must be a json object", file=file, reason="bad_record", skippable=False
        )
    images = _as_list(coco, "images", file, required=True)
    anns = _as_list(coco, "annotations", file, required=False)
    categories = {}
    for cat in _as_list(coco, "categories", file, required=False):
        if isinstance(cat, dict) and "id" in cat and "name" in cat:
            categories[cat["id"]] = str(cat["name"])

    items: dict[Any, dict[str, Any]] = {}
    for i, img in enumerate(images):
        try:
            _plan_image(img, i, file, Path(images_dir), items)
        except ConversionError as e:
            policy.fail(e)
    for i, ann in enumerate(anns):
        try:
            _plan_annotation(ann, i, file, items, categories, noun_phrase_from_category)
        except ConversionError as e:
            policy.fail(e)
    return list(items.values())


def _plan_image(
    img: Any, index: int, file: Path, images_dir: Path, items: dict[Any, dict[str, Any]]
) -> None:
    """Check one ``images[]`` entry and add its item (no annotations yet) to ``items``."""
    record = f"images[{index}]" + (f" (id {img.get('id')!r})" if isinstance(img, dict) else "")
    if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
        raise ConversionError(
            "an image entry needs 'id' and 'file_name'",
            file=file,
            record=record,
            reason="bad_record",
        )
    image_id = img["id"]
    if image_id in items:
        raise ConversionError(
            f"duplicate image id {image_id!r} (first at {items[image_id]['record']}); keeping the first",
            file=file,
            record=record,
            reason="duplicate_image_id",
        )
    items[image_id] = {
        "image": str(images_dir / img["file_name"]),
        "image_id": str(image_id),
        "size": [img.get("width"), img.get("height")],
        "negative_phrases": _phrases(img.get("negative_phrases"), file, record),
        "annotations": [],
        "file": str(file),
        "record": f"image id {image_id!r} ({img['file_name']})",
    }


def _plan_annotation(
    ann: Any,
    index: int,
    file: Path,
    items: dict[Any, dict[str, Any]],
    categories: dict[Any, str],
    noun_phrase_from_category: bool,
) -> None:
    """Check one ``annotations[]`` entry and attach it to its image's item."""
    ann_id = ann.get("id", f"#{index}") if isinstance(ann, dict) else f"#{index}"
    record = f"annotation id {ann_id!r}"
    if not isinstance(ann, dict):
        raise ConversionError("an annotation must be a json object", file=file, record=record)
    if ann.get("image_id") not in items:
        raise ConversionError(
            f"annotation for unknown image id {ann.get('image_id')!r}",
            file=file,
            record=record,
            reason="unknown_image_id",
        )
    if ann.get("category_id") not in categories:
        raise ConversionError(
            f"unknown category id {ann.get('category_id')!r}",
            file=file,
            record=record,
            reason="unknown_category",
        )
    category = categories[ann["category_id"]]
    phrase = ann.get("noun_phrase")
    if phrase is not None and not isinstance(phrase, str):
        raise ConversionError("noun_phrase must be a string", file=file, record=record)
    phrase = (phrase or "").strip()
    if not phrase:
        if not noun_phrase_from_category:
            raise ConversionError(
                f"missing noun_phrase (pass {NOUN_PHRASE_FLAG} to use the category name"
                f" {category!r} instead)",
                file=file,
                record=record,
                reason="missing_noun_phrase",
            )
        phrase = category
    items[ann["image_id"]]["annotations"].append(
        {
            "record": record,
            "segmentation": check_segmentation(ann.get("segmentation"), file, record),
            "bbox": None if ann.get("bbox") is None else check_bbox(ann["bbox"], file, record),
            "category": category,
            "noun_phrase": phrase,
            "attributes": check_attributes(ann.get("attributes"), file, record),
            "iscrowd": bool(ann.get("iscrowd", 0)),
        }
    )


def convert_coco_text(
    images: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    *,
    split: str = "train",
    noun_phrase_from_category: bool = False,
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    report: Report | None = None,
) -> datasets.DatasetDict:
    """COCO-text json + image folder -> ``DatasetDict`` with the one split ``split``.

    Without ``noun_phrase_from_category`` an annotation lacking ``noun_phrase`` is an error
    naming the annotation id (text-prompted training needs a phrase per object; the category
    fallback is a deliberate choice, not a silent default).
    """
    check_on_error(on_error)
    report = report if report is not None else Report()
    report.source = str(annotations)
    plan_report = Report()
    items = plan_coco(
        annotations,
        images,
        noun_phrase_from_category=noun_phrase_from_category,
        policy=ErrorPolicy(on_error, plan_report),
    )
    if not items and not plan_report.skipped:
        raise ConversionError(
            "empty dataset: the file lists no images",
            file=annotations,
            reason="empty_dataset",
            skippable=False,
        )
    dataset, split_report = build_split(
        convert_planned_image,
        kind="coco",
        version=VERSION,
        split=split,
        items=items,
        files=[annotations] + [it["image"] for it in items],
        options={
            "noun_phrase_from_category": noun_phrase_from_category,
            "images": str(Path(images).absolute()),
            "annotations": str(Path(annotations).absolute()),
        },
        on_error=on_error,
        plan_report=plan_report,
        cache_dir=cache_dir,
    )
    report.merge(split_report)
    return finish({split: dataset}, report, annotations)


def prepare_coco_text(
    images: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split: str = "train",
    noun_phrase_from_category: bool = False,
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    card: str = "coco_text",
    overwrite: bool = False,
) -> tuple[Report, Path]:
    """Convert a COCO-text file and save it (``save_to_disk``) with its card as README.md.

    ``out`` is checked before converting; ``overwrite`` as in
    :func:`sam_hf.data.sources.minneapple.prepare_minneapple`.
    """
    check_prepared_output(out, PREPARE_COMMAND, overwrite=overwrite)
    report = Report()
    dataset = convert_coco_text(
        images,
        annotations,
        split=split,
        noun_phrase_from_category=noun_phrase_from_category,
        on_error=on_error,
        cache_dir=cache_dir,
        report=report,
    )
    return report, save_prepared(
        dataset, out, card, report, command=PREPARE_COMMAND, overwrite=overwrite
    )
