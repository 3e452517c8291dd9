"""Per-image JSON polygon format -> the one schema.

Layout: ``<root>/{train,val,test}/images/*`` and, per image, ``annotations/<same stem>.json``::

    {"image_id": "...", "width": W, "height": H,
     "instances": [{"instance_id": 1, "label": "apple",
                    "segmentation": {"polygon": [[x1, y1, x2, y2, ...], ...]},
                    "attributes": {"color": "red", "ripeness": "ripe"}}],
     "negative_phrases": ["pear"]}            # optional (our extension, as in COCO-text)

An instance may also carry its own ``noun_phrase``; otherwise its ``label`` is the phrase (the
attribute-composed phrases are made by ``scripts/convert_mineapple_to_coco_text.py``).
Polygons are rasterised exactly as COCO polygons are (pycocotools), so this reader and the
COCO reader agree pixel for pixel on the same shapes. ``val`` becomes the ``validation`` split.
A split without ``annotations/`` is images only (rows with no objects).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets

from sam_hf.data.build import build_planned_splits, finish
from sam_hf.data.cards.dataset_card import check_prepared_output, save_prepared
from sam_hf.data.checks import check_attributes, check_polygons, list_images, load_json
from sam_hf.data.report import ConversionError, ErrorPolicy, Report, check_on_error
from sam_hf.data.sources.coco import convert_planned_image

#: Names the writer in the ``.sam_hf_output.json`` marker of a prepared folder.
PREPARE_COMMAND = "prepare_json_polygons"

#: Bump when the rows this converter writes change for the same files.
VERSION = "jsonpoly-1"

SPLIT_DIRS = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}


def find_splits(root: str | os.PathLike[str]) -> dict[str, tuple[Path, Path | None]]:
    """Split name -> (images folder, annotations folder or None)."""
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(
            "source folder not found", file=root, reason="missing_file", skippable=False
        )
    found = {}
    for split, names in SPLIT_DIRS.items():
        hit = next((root / n for n in names if (root / n / "images").is_dir()), None)
        if hit is not None:
            ann = hit / "annotations"
            found[split] = (hit / "images", ann if ann.is_dir() else None)
    if not found:
        raise ConversionError(
            "no split found: expected <root>/{train,val,test}/images/ with annotations/<stem>.json",
            file=root,
            reason="empty_dataset",
            skippable=False,
        )
    return found


def _plan_instance(inst: Any, index: int, file: Path) -> dict[str, Any]:
    inst_id = inst.get("instance_id", f"#{index}") if isinstance(inst, dict) else f"#{index}"
    record = f"instance_id {inst_id!r}"
    if not isinstance(inst, dict):
        raise ConversionError("an instance must be a json object", file=file, record=record)
    label = inst.get("label")
    if not isinstance(label, str) or not label.strip():
        raise ConversionError(
            "instance needs a non-empty 'label'", file=file, record=record, reason="missing_label"
        )
    segm = inst.get("segmentation")
    if not isinstance(segm, dict) or "polygon" not in segm:
        raise ConversionError(
            "segmentation must be {'polygon': [[x1, y1, x2, y2, ...], ...]}",
            file=file,
            record=record,
            reason="missing_segmentation" if not segm else "bad_segmentation",
        )
    phrase = inst.get("noun_phrase")
    if phrase is not None and not isinstance(phrase, str):
        raise ConversionError("noun_phrase must be a string", file=file, record=record)
    return {
        "record": record,
        "segmentation": {"polygons": check_polygons(segm["polygon"], file, record)},
        "bbox": None,
        "category": label.strip(),
        "noun_phrase": (phrase or "").strip() or label.strip(),
        "attributes": check_attributes(inst.get("attributes"), file, record),
        "iscrowd": bool(inst.get("iscrowd", False)),
    }


def _plan_split(
    images_dir: Path, ann_dir: Path | None, policy: ErrorPolicy
) -> list[dict[str, Any]]:
    items = []
    seen: dict[str, Path] = {}
    stems = set()
    for image in list_images(images_dir):
        stems.add(image.stem)
        item: dict[str, Any] = {
            "image": str(image),
            "image_id": image.stem,
            "size": None,
            "negative_phrases": [],
            "annotations": [],
            "file": str(image),
            "record": f"image {image.stem}",
            "annotation_file": None,
        }
        try:
            if ann_dir is not None:
                ann_file = ann_dir / f"{image.stem}.json"
                if not ann_file.is_file():
                    raise ConversionError(
                        f"no annotation file {ann_file} for this image",
                        file=image,
                        record=f"image {image.stem}",
                        reason="missing_annotation",
                    )
                item.update(_plan_annotation_file(ann_file, image, policy))
            if item["image_id"] in seen:
                raise ConversionError(
                    f"duplicate image id {item['image_id']!r} (also {seen[item['image_id']].name})",
                    file=item["file"],
                    record=item["record"],
                    reason="duplicate_image_id",
                )
        except ConversionError as e:
            policy.fail(e)
            continue
        seen[item["image_id"]] = image
        items.append(item)
    if ann_dir is not None:
        for ann_file in sorted(ann_dir.glob("*.json")):
            if ann_file.stem not in stems:
                policy.fail(
                    ConversionError(
                        f"annotation for unknown image {ann_file.stem!r} (no such file in {images_dir})",
                        file=ann_file,
                        record=f"image id {ann_file.stem}",
                        reason="unknown_image_id",
                    )
                )
    return items


def _plan_annotation_file(ann_file: Path, image: Path, policy: ErrorPolicy) -> dict[str, Any]:
    try:
        doc = load_json(ann_file)
    except ConversionError as e:  # one bad per-image file costs one image, not the dataset
        raise ConversionError(
            e.detail, file=ann_file, record=f"image {image.stem}", reason=e.reason
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("instances", []), list):
        raise ConversionError(
            "annotation file must be an object with an 'instances' list",
            file=ann_file,
            record=f"image {image.stem}",
            reason="bad_record",
        )
    image_id = str(doc.get("image_id", image.stem))
    record = f"image_id {image_id!r}"
    negatives = doc.get("negative_phrases") or []
    if not isinstance(negatives, list) or not all(isinstance(p, str) for p in negatives):
        raise ConversionError(
            "negative_phrases must be a list of strings", file=ann_file, record=record
        )
    annotations = []
    for i, inst in enumerate(doc.get("instances", [])):
        try:
            annotations.append(_plan_instance(inst, i, ann_file))
        except ConversionError as e:
            policy.fail(e)
    return {
        "image_id": image_id,
        "size": [doc.get("width"), doc.get("height")],
        "negative_phrases": [p.strip() for p in negatives if p.strip()],
        "annotations": annotations,
        "file": str(ann_file),
        "record": record,
        "annotation_file": str(ann_file),
    }


def convert_json_polygons(
    source: str | os.PathLike[str],
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    report: Report | None = None,
) -> datasets.DatasetDict:
    """Per-image JSON tree -> ``DatasetDict`` (``train`` / ``validation`` / ``test`` as present).

    With ``val_fraction > 0`` and no ``val/`` folder, a seeded validation split is carved
    from ``train`` as for MinneApple.
    """
    check_on_error(on_error)
    report = report if report is not None else Report()
    report.source = str(source)
    plans: dict[str, tuple[list[dict[str, Any]], Report]] = {}
    for split, (images_dir, ann_dir) in find_splits(source).items():
        plan_report = Report()
        plans[split] = (
            _plan_split(images_dir, ann_dir, ErrorPolicy(on_error, plan_report)),
            plan_report,
        )
    built = build_planned_splits(
        plans,
        convert_planned_image,
        source=source,
        kind="jsonpoly",
        version=VERSION,
        files_of=lambda it: (
            [it["image"]] + ([it["annotation_file"]] if it["annotation_file"] else [])
        ),
        val_fraction=val_fraction,
        seed=seed,
        on_error=on_error,
        report=report,
        cache_dir=cache_dir,
    )
    return finish(built, report, source)


def prepare_json_polygons(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> tuple[Report, Path]:
    """Convert a per-image JSON tree and save it (``save_to_disk``) with its card as README.md.

    ``out`` is checked before converting; ``overwrite`` as in
    :func:`sam_hf.data.sources.minneapple.prepare_minneapple`.
    """
    check_prepared_output(out, PREPARE_COMMAND, overwrite=overwrite)
    report = Report()
    dataset = convert_json_polygons(
        source,
        val_fraction=val_fraction,
        seed=seed,
        on_error=on_error,
        cache_dir=cache_dir,
        report=report,
    )
    return report, save_prepared(
        dataset, out, "json_polygons", report, command=PREPARE_COMMAND, overwrite=overwrite
    )
