"""SA-Co image annotations (SAM3's benchmark format) -> the one schema.

SA-Co is COCO-derived, but each ``images[]`` entry is an (image, ``text_input``) *pair*: the
same picture appears once per noun phrase asked about it. A pair with annotations is a positive
phrase (each annotation an instance of it); a pair with none is a negative phrase, known to be
absent from the picture. Boxes are normalised ``[x, y, w, h]`` in [0, 1]; segmentations are
COCO RLE.

Our schema is one row per *image*, so pairs sharing a ``file_name`` are merged: their objects
(``noun_phrase`` = the pair's ``text_input``), in the order of the pairs and then of the
annotations, and their negative phrases in ``negative_phrases``. ``image_id`` is the
``file_name``. The same phrase twice for one image (or both positive and negative) is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from sam_hf.data.build import build_split, finish
from sam_hf.data.cards.dataset_card import check_prepared_output, save_prepared
from sam_hf.data.checks import check_attributes, check_bbox, load_json
from sam_hf.data.report import ConversionError, ErrorPolicy, Report, check_on_error
from sam_hf.data.sources.coco import check_segmentation, convert_planned_image

#: Names the writer in the ``.sam_hf_output.json`` marker of a prepared folder.
PREPARE_COMMAND = "prepare_saco"

#: Bump when the rows this converter writes change for the same files.
VERSION = "saco-1"


def _box_to_pixels(box: list[float], size: list[Any], file: Path, record: str) -> list[float]:
    """Normalised xywh -> pixel xywh, using the pair's declared width and height."""
    width, height = size
    if (
        not isinstance(width, int | float)
        or not isinstance(height, int | float)
        or width <= 0
        or height <= 0
    ):
        raise ConversionError(
            "its pair has no valid width/height, needed to scale the normalised box",
            file=file,
            record=record,
            reason="bad_record",
        )
    x, y, w, h = box
    return [x * width, y * height, w * width, h * height]


def plan_saco(
    annotations: str | os.PathLike[str], images_dir: str | os.PathLike[str], policy: ErrorPolicy
) -> list[dict[str, Any]]:
    """Group SA-Co pairs by ``file_name`` into per-image items (objects and negatives)."""
    file = Path(annotations)
    doc = load_json(file)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ConversionError(
            "an SA-Co file needs an 'images' list", file=file, reason="bad_record", skippable=False
        )
    anns = doc.get("annotations") or []
    if not isinstance(anns, list):
        raise ConversionError(
            "'annotations' must be a list", file=file, reason="bad_record", skippable=False
        )
    categories = {
        c["id"]: str(c["name"])
        for c in doc.get("categories") or []
        if isinstance(c, dict) and "id" in c and "name" in c
    }
    plan = _Plan(file, Path(images_dir))
    for i, entry in enumerate(doc["images"]):
        try:
            plan.add_pair(entry, i)
        except ConversionError as e:
            policy.fail(e)
    for i, ann in enumerate(anns):
        try:
            plan.add_annotation(ann, i, categories)
        except ConversionError as e:
            policy.fail(e)
    for pair in plan.pairs.values():  # pairs in file order, so objects keep the file's order
        pair["item"]["annotations"].extend(pair["annotations"])
        if pair["refs"] == 0:  # a pair whose annotations were all skipped is not a negative
            pair["item"]["negative_phrases"].append(pair["phrase"])
    return list(plan.items.values())


@dataclass
class _Plan:
    """The pairs and per-image items of one SA-Co file, while it is read."""

    file: Path
    images_dir: Path
    #: pair id -> {"item", "phrase", "record", "annotations", "refs"}
    pairs: dict[Any, dict[str, Any]] = field(default_factory=dict)
    #: file_name -> item
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: file_name -> phrase -> record of its pair
    phrases: dict[str, dict[str, str]] = field(default_factory=dict)

    def add_pair(self, entry: Any, index: int) -> None:
        """Check one ``images[]`` pair; merge it into the item of its ``file_name``."""
        file = self.file
        record = f"images[{index}]" + (
            f" (id {entry.get('id')!r})" if isinstance(entry, dict) else ""
        )
        if (
            not isinstance(entry, dict)
            or "id" not in entry
            or not isinstance(entry.get("file_name"), str)
        ):
            raise ConversionError(
                "a pair needs 'id' and 'file_name'", file=file, record=record, reason="bad_record"
            )
        if entry["id"] in self.pairs:
            raise ConversionError(
                f"duplicate image id {entry['id']!r} (first at {self.pairs[entry['id']]['record']})",
                file=file,
                record=record,
                reason="duplicate_image_id",
            )
        phrase = entry.get("text_input")
        if not isinstance(phrase, str) or not phrase.strip():
            raise ConversionError(
                "pair has no text_input (the noun phrase)",
                file=file,
                record=record,
                reason="missing_noun_phrase",
            )
        phrase = phrase.strip()
        name = entry["file_name"]
        item = self._item(name, [entry.get("width"), entry.get("height")], record)
        if phrase in self.phrases.get(name, {}):
            raise ConversionError(
                f"phrase {phrase!r} already given for {name!r} at {self.phrases[name][phrase]}",
                file=file,
                record=record,
                reason="duplicate_phrase",
            )
        self.items[name] = item
        self.phrases.setdefault(name, {})[phrase] = record
        pair = {"item": item, "phrase": phrase, "record": record, "annotations": [], "refs": 0}
        self.pairs[entry["id"]] = pair

    def _item(self, name: str, size: list[Any], record: str) -> dict[str, Any]:
        """The item of ``file_name`` ``name`` (new, or the one an earlier pair made)."""
        item = self.items.get(name)
        if item is None:
            return {
                "image": str(self.images_dir / name),
                "image_id": name,
                "size": size,
                "negative_phrases": [],
                "annotations": [],
                "file": str(self.file),
                "record": f"file_name {name!r}",
            }
        if item["size"] != size:
            raise ConversionError(
                f"pair declares size {size} but an earlier pair of {name!r} declares {item['size']}",
                file=self.file,
                record=record,
                reason="mask_size_mismatch",
            )
        return item

    def add_annotation(self, ann: Any, index: int, categories: dict[Any, str]) -> None:
        """Check one ``annotations[]`` entry and attach it to its pair."""
        file = self.file
        ann_id = ann.get("id", f"#{index}") if isinstance(ann, dict) else f"#{index}"
        record = f"annotation id {ann_id!r}"
        if not isinstance(ann, dict):
            raise ConversionError("an annotation must be a json object", file=file, record=record)
        pair = self.pairs.get(ann.get("image_id"))
        if pair is None:
            raise ConversionError(
                f"annotation for unknown image id {ann.get('image_id')!r}",
                file=file,
                record=record,
                reason="unknown_image_id",
            )
        pair["refs"] += 1
        if "category_id" in ann and ann["category_id"] not in categories:
            raise ConversionError(
                f"unknown category id {ann['category_id']!r}",
                file=file,
                record=record,
                reason="unknown_category",
            )
        segmentation = check_segmentation(ann.get("segmentation"), file, record)
        bbox = None
        if ann.get("bbox") is not None:
            box = check_bbox(ann["bbox"], file, record)
            bbox = _box_to_pixels(box, pair["item"]["size"], file, record)
        pair["annotations"].append(
            {
                "record": record,
                "segmentation": segmentation,
                "bbox": bbox,
                "category": categories.get(ann.get("category_id"), pair["phrase"]),
                "noun_phrase": pair["phrase"],
                "attributes": check_attributes(ann.get("attributes"), file, record),
                "iscrowd": bool(ann.get("iscrowd", 0)),
            }
        )


def convert_saco(
    images: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    *,
    split: str = "test",
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    report: Report | None = None,
) -> datasets.DatasetDict:
    """SA-Co json + image folder -> ``DatasetDict`` with the one split ``split`` (default test:
    SA-Co/Gold and Silver are evaluation sets)."""
    check_on_error(on_error)
    report = report if report is not None else Report()
    report.source = str(annotations)
    plan_report = Report()
    items = plan_saco(annotations, images, ErrorPolicy(on_error, plan_report))
    if not items and not plan_report.skipped:
        raise ConversionError(
            "empty dataset: the file lists no images",
            file=annotations,
            reason="empty_dataset",
            skippable=False,
        )
    dataset, split_report = build_split(
        convert_planned_image,
        kind="saco",
        version=VERSION,
        split=split,
        items=items,
        files=[annotations] + [it["image"] for it in items],
        options={
            "images": str(Path(images).absolute()),
            "annotations": str(Path(annotations).absolute()),
        },
        on_error=on_error,
        plan_report=plan_report,
        cache_dir=cache_dir,
    )
    report.merge(split_report)
    return finish({split: dataset}, report, annotations)


def prepare_saco(
    images: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split: str = "test",
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> tuple[Report, Path]:
    """Convert an SA-Co file and save it (``save_to_disk``) with its card as README.md.

    ``out`` is checked before converting; ``overwrite`` as in
    :func:`sam_hf.data.sources.minneapple.prepare_minneapple`.
    """
    check_prepared_output(out, PREPARE_COMMAND, overwrite=overwrite)
    report = Report()
    dataset = convert_saco(
        images, annotations, split=split, on_error=on_error, cache_dir=cache_dir, report=report
    )
    return report, save_prepared(
        dataset, out, "saco", report, command=PREPARE_COMMAND, overwrite=overwrite
    )
