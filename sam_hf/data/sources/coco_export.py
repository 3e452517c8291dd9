"""Any converted dataset -> COCO-text json, noun phrases composed from attributes.

:func:`export_coco_text` writes COCO json whose ``noun_phrase`` is composed from each object's
attributes by templates such as ``"{ripeness} {color} {noun}"`` (:class:`PhraseTemplates`),
the way MinneApple (no attributes) or per-image JSON data with attributes becomes COCO-text
for SAM3; :func:`convert_to_coco_text` reads such a tree with the matching converter first
(``scripts/convert_mineapple_to_coco_text.py``). The reader of COCO-text is
:mod:`sam_hf.data.sources.coco`.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import yaml

from sam_hf.data.checks import image_format_suffix
from sam_hf.data.output import OutputRules, atomic_output, check_output, resolve_output
from sam_hf.data.report import ConversionError, Report
from sam_hf.data.schema import attributes_dict
from sam_hf.data.sources.jsonpoly import convert_json_polygons
from sam_hf.data.sources.minneapple import convert_minneapple

#: Names the writer in the ``.sam_hf_output.json`` marker of its output folders.
EXPORT_COMMAND = "convert_mineapple_to_coco_text"


# ---------------------------------------------------------------------------------------------
# Noun phrases from attributes
# ---------------------------------------------------------------------------------------------


def default_templates_path() -> Path:
    """The templates YAML shipped in the package (``sam_hf/assets/attribute_templates.yaml``)."""
    return Path(str(resources.files("sam_hf").joinpath("assets", "attribute_templates.yaml")))


@dataclass
class PhraseTemplates:
    """Compose a noun phrase from an object's attributes.

    The first template whose placeholders (other than ``{noun}``) are all among the object's
    attributes is used, so list them from most to least specific. ``{noun}`` is the object's
    category (``base_noun`` overrides it when set). ``values`` rewrites attribute values before
    they are inserted (``{"health": {"healthy": ""}}`` leaves "healthy" out of phrases). An
    object with no attributes, or that no template fits, gets the bare noun.
    """

    templates: list[str] = field(default_factory=list)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    base_noun: str | None = None

    def __post_init__(self) -> None:
        self._fields = [self._placeholders(t) for t in self.templates]

    @staticmethod
    def _placeholders(template: str) -> set[str]:
        fields = set()
        for _, name, spec, conv in string.Formatter().parse(template):
            if name is None:
                continue
            if not name.isidentifier() or spec or conv:
                raise ValueError(
                    f"template {template!r}: use plain named placeholders like {{color}}"
                )
            fields.add(name)
        return fields

    def compose(self, attributes: dict[str, str], noun: str) -> str:
        """The phrase for one object (whitespace collapsed)."""
        noun = self.base_noun or noun
        for template, fields in zip(self.templates, self._fields):
            needed = fields - {"noun"}
            if needed and needed <= attributes.keys():
                mapped = {
                    k: self.values.get(k, {}).get(v, v)
                    for k, v in attributes.items()
                    if k in needed
                }
                return " ".join(template.format(noun=noun, **mapped).split())
        return noun

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str] | None = None) -> PhraseTemplates:
        """Load templates; ``None`` loads the shipped default. Bad files name themselves."""
        path = Path(path) if path is not None else default_templates_path()
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConversionError(
                "templates file not found", file=path, reason="missing_file", skippable=False
            ) from None
        except (OSError, yaml.YAMLError) as e:
            raise ConversionError(
                f"cannot parse templates: {e}", file=path, reason="bad_record", skippable=False
            ) from None
        if not isinstance(raw, dict) or not isinstance(raw.get("templates"), list):
            raise ConversionError(
                "templates file needs a 'templates:' list of strings",
                file=path,
                reason="bad_record",
                skippable=False,
            )
        values = raw.get("values") or {}
        if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
            raise ConversionError(
                "'values:' must map attribute -> {value: replacement}",
                file=path,
                reason="bad_record",
                skippable=False,
            )
        try:
            return cls(
                templates=[str(t) for t in raw["templates"]],
                values={
                    str(k): {str(a): "" if b is None else str(b) for a, b in v.items()}
                    for k, v in values.items()
                },
                base_noun=raw.get("base_noun"),
            )
        except ValueError as e:
            raise ConversionError(str(e), file=path, reason="bad_record", skippable=False) from None


# ---------------------------------------------------------------------------------------------
# Export: schema rows -> COCO-text json + image files
# ---------------------------------------------------------------------------------------------

#: File names of the exported annotation files (``validation`` is written as ``val.json``).
EXPORT_SPLIT_NAMES = {"train": "train", "validation": "val", "test": "test"}


def export_coco_text(
    dataset: datasets.DatasetDict,
    out: str | os.PathLike[str],
    templates: PhraseTemplates,
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``out/images/<split>/<image_id><ext>`` and ``out/annotations/<split>.json``.

    Each annotation carries a compressed RLE (bit-identical to the stored mask), the box, the
    area, ``attributes`` and a ``noun_phrase`` composed by ``templates``; images carry their
    ``negative_phrases`` when they have any. Written to a temporary folder beside ``out`` and
    renamed into place (:func:`sam_hf.data.output.atomic_output`: a folder this command did
    not write is refused unless ``overwrite``, which still keeps files sam_hf did not write).
    Returns the annotation file of each split.
    """
    written: dict[str, Path] = {}
    out = resolve_output(out)
    rules = OutputRules(EXPORT_COMMAND, overwrite=overwrite, flag="--output")
    with atomic_output(out, rules) as tmp:
        (tmp / "annotations").mkdir()
        for split, ds in dataset.items():
            name = EXPORT_SPLIT_NAMES.get(split, split)
            coco = _export_split(
                ds.cast_column("image", datasets.Image(decode=False)), tmp, name, templates
            )
            path = tmp / "annotations" / f"{name}.json"
            path.write_text(json.dumps(coco), encoding="utf-8")
            written[split] = out / "annotations" / f"{name}.json"
    return written


def _export_split(
    ds: datasets.Dataset, root: Path, name: str, templates: PhraseTemplates
) -> dict[str, Any]:
    image_dir = root / "images" / name
    image_dir.mkdir(parents=True)
    categories: dict[str, int] = {}
    images, annotations = [], []
    for index, row in enumerate(ds, start=1):
        data = row["image"]["bytes"]
        suffix = image_format_suffix(data)
        file_name = f"{name}/{row['image_id']}{suffix}"
        (root / "images" / file_name).write_bytes(data)
        entry: dict[str, Any] = {
            "id": index,
            "file_name": file_name,
            "width": row["width"],
            "height": row["height"],
        }
        if row["negative_phrases"]:
            entry["negative_phrases"] = list(row["negative_phrases"])
        images.append(entry)
        for obj in row["objects"]:
            cat_id = categories.setdefault(obj["category"], len(categories) + 1)
            attrs = attributes_dict(obj["attributes"])
            ann = {
                "id": len(annotations) + 1,
                "image_id": index,
                "category_id": cat_id,
                "segmentation": {
                    "size": list(obj["segmentation"]["size"]),
                    "counts": obj["segmentation"]["counts"],
                },
                "area": obj["area"],
                "bbox": list(obj["bbox"]),
                "iscrowd": int(obj["iscrowd"]),
                "noun_phrase": templates.compose(attrs, obj["category"]),
            }
            if attrs:
                ann["attributes"] = attrs
            annotations.append(ann)
    return {
        "info": {
            "description": "COCO-text exported by sam_hf (noun phrases composed from attributes)"
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for n, i in categories.items()],
    }


def detect_layout(root: str | os.PathLike[str]) -> str:
    """``"json_polygons"`` if any split has an ``annotations/`` folder, else ``"minneapple"``."""
    root = Path(root)
    for split in ("train", "val", "validation", "test"):
        if (root / split / "annotations").is_dir():
            return "json_polygons"
    return "minneapple"


def convert_to_coco_text(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    templates: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> tuple[Report, dict[str, Path]]:
    """MinneApple or per-image JSON tree -> COCO-text (``out/annotations/<split>.json`` + images).

    The tree is read by the matching converter (same checks, same Arrow cache), then exported
    with noun phrases composed by ``templates`` (default: the shipped YAML). Objects without
    attributes, all of MinneApple's, get their category ("apple"). ``out`` is checked before
    reading anything; ``overwrite`` as in :func:`export_coco_text`.
    """
    check_output(out, OutputRules(EXPORT_COMMAND, overwrite=overwrite, flag="--output"))
    phrase_templates = PhraseTemplates.from_yaml(templates)
    report = Report()
    reader = (
        convert_json_polygons if detect_layout(source) == "json_polygons" else convert_minneapple
    )
    dataset = reader(
        source,
        val_fraction=val_fraction,
        seed=seed,
        on_error=on_error,
        cache_dir=cache_dir,
        report=report,
    )
    return report, export_coco_text(dataset, out, phrase_templates, overwrite=overwrite)
