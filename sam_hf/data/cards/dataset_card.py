"""Dataset cards (Hugging Face card format) for the datasets sam_hf prepares.

The cards live here, in the package, because ``prepare_*`` writes the matching card as
``README.md`` beside every prepared dataset (a plain ``pip install`` has no ``data_cards/``
folder). ``data_cards/*.md`` in the repository are these same cards rendered without counts;
a test keeps them identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from sam_hf.data.build import save_atomically
from sam_hf.data.output import OutputRules, check_output
from sam_hf.data.report import Report

SCHEMA_SECTION = """\
Every row follows sam_hf's one sample schema (`sam_hf.data.schema.FEATURES`):

| field | type | meaning |
|---|---|---|
| `image` | Image | the encoded image file, stored as bytes (the Arrow data is self-contained) |
| `image_id` | string | {image_id} |
| `width`, `height` | int32 | image size in pixels |
| `objects` | list | one entry per instance, in {order} |
| `objects.segmentation` | `{{size: [h, w], counts: str}}` | COCO compressed RLE of the instance mask |
| `objects.bbox` | float32[4] | `[x, y, w, h]` in pixels |
| `objects.area` | float32 | mask area in pixels |
| `objects.category` | string | {category} |
| `objects.noun_phrase` | string | {noun_phrase} |
| `objects.attributes` | `{{keys: [str], values: [str]}}` | {attributes} |
| `objects.iscrowd` | bool | COCO crowd flag |
| `negative_phrases` | list[string] | {negatives} |

Load a prepared copy with `datasets.load_from_disk(path)`; decode a mask with
`sam_hf.data.rle.decode(obj["segmentation"])`.
"""


@dataclass(frozen=True)
class CardSpec:
    """Header fields and body of one card; ``{counts}`` in the body takes the prepared counts."""

    data: DatasetCardData
    body: str


_MINNEAPPLE_BODY = (
    """\
# MinneApple (detection and segmentation), in the sam_hf schema

MinneApple is a benchmark of orchard images with every apple outlined as an instance mask, for
apple detection, segmentation and counting. sam_hf uses its detection/segmentation part to
fine-tune SAM2 (point, box and mask prompts) and SAM3 (the text prompt "apple").

## Dataset structure

- Source archive `detection.tar.gz`: 670 training images with instance masks and 331 test
  images (`detection/{train,test}/images/*.png`, masks in `detection/train/masks/*.png`).
  The test masks were released later in `test_data.zip`; `prepare_mineapple.py` uses them for
  the test split when they are present, otherwise the test rows have no objects.
- Images are 720 pixels wide and 1280 high. Up to 123 apples per training image, 28,179
  training instances in all; the median apple covers roughly 500-600 pixels, so most
  apples are COCO-"small".
- Splits written by `prepare_mineapple.py`: `train`, `validation` (carved from train with a
  seeded draw, `--val-fraction`, default 0.1) and `test`, as present.

"""
    + SCHEMA_SECTION.format(
        image_id="file name without extension",
        order="ascending instance id of the mask",
        category='always "apple"',
        noun_phrase='always "apple"',
        attributes="empty: MinneApple has no attributes",
        negatives="empty",
    )
    + """
{counts}
## Dataset creation

Published by Nicolai Häni, Pravakar Roy and Volkan Isler (University of Minnesota) in the
Data Repository for the University of Minnesota, handle 11299/206575, DOI
[10.13020/8ecp-3r13](https://doi.org/10.13020/8ecp-3r13). Its masks are single-channel PNGs,
0 for background and one id (1..N) per apple, each apple drawn as a filled polygon.

sam_hf converts each mask id into one object whose RLE decodes to exactly `mask == id`
(tested), with category and noun phrase "apple". Images are stored as the original PNG bytes.
Download with `python scripts/download_mineapple.py --out DIR` (or by hand from the landing
page), then `python scripts/prepare_mineapple.py --source DIR --out OUT`.

## Limitations

- One class only, and no attributes: phrases such as "ripe red apple" do not come with the
  data; they need your own annotations or templates
  (`scripts/convert_mineapple_to_coco_text.py`).
- Most apples are small, so mask quality at the boundary matters more than for typical
  COCO objects; COCO's default of 100 detections per image is
  below the 123 apples of the fullest images.
- The licence forbids commercial use (see below); models trained on it inherit that question.

## Licence

Creative Commons Attribution-NonCommercial-ShareAlike 3.0 United States (CC BY-NC-SA 3.0 US).

## Citation

```bibtex
@article{haeni2020minneapple,
  title   = {MinneApple: A Benchmark Dataset for Apple Detection and Segmentation},
  author  = {H{\\"a}ni, Nicolai and Roy, Pravakar and Isler, Volkan},
  journal = {IEEE Robotics and Automation Letters},
  volume  = {5},
  number  = {2},
  pages   = {852--858},
  year    = {2020},
  doi     = {10.1109/LRA.2020.2965061}
}
```
"""
)

_SYNTHETIC_BODY = (
    """\
# Synthetic orchard, in the sam_hf schema

Procedurally drawn orchard scenes made by sam_hf itself: apples on foliage, partly hidden by
leaves and by each other, many of them small as in MinneApple. It is the embedded default of
sam_hf's demos and tests: it needs no download and is the same on every machine for a seed.

## Dataset structure

- Written by `python scripts/make_synthetic_orchard.py --out DIR --num-images N --seed S`
  in two layouts: `DIR/minneapple/{train,test}/{images,masks}` (instance-id PNG masks, read by
  `prepare_mineapple.py`) and `DIR/coco_text/{images/, annotations/{train,val}.json}`
  (COCO-text with attribute phrases, read by `prepare_coco_text.py`).
- Each apple has attributes `color` (red, green, yellow), `ripeness` (ripe, unripe) and
  `health` (healthy, damaged), and in the COCO-text layout a noun phrase composed from them.

"""
    + SCHEMA_SECTION.format(
        image_id="file stem (MinneApple layout) or the COCO image id (COCO-text layout)",
        order="the order the generator wrote them (mask id / annotation order)",
        category='"apple"',
        noun_phrase='"apple" (MinneApple layout) or the attribute phrase, e.g. "ripe red apple"',
        attributes="color, ripeness, health (COCO-text layout); empty in the MinneApple layout",
        negatives="phrases known to be absent from the image (COCO-text layout)",
    )
    + """
{counts}
## Dataset creation

Generated by `sam_hf/data/synthetic/orchard.py`: shapes, colours, occluding leaves and attributes are
drawn from a random generator seeded by `--seed`, so the same command writes the same files.
No photograph or third-party data is involved.

## Limitations

- Drawn, not photographed: texture, lighting, blur and the look of real damage differ from
  orchard images. Use it to test pipelines and to warm up models, not to measure how well a
  model will do on real orchards (use MinneApple or your own images for that).
- Attribute frequencies are whatever the generator samples; they do not describe any real
  orchard.

## Licence

Apache-2.0, like the sam_hf code that generates it.

## Citation

No publication. Cite the sam_hf repository if it helped your work.
"""
)

_COCO_TEXT_BODY = (
    """\
# COCO-text dataset, in the sam_hf schema

A COCO instances file whose annotations carry a text `noun_phrase` (optionally `attributes`,
and per image `negative_phrases`), prepared for text-prompted segmentation (SAM3) and for
point/box prompts (SAM2).

## Dataset structure

- Input: `--images DIR` and `--annotations FILE.json` (COCO: `images`, `annotations`,
  `categories`). Segmentations may be polygons, compressed or uncompressed RLE; `iscrowd` is
  kept. Output: a `DatasetDict` with one split (`--split`, default `train`).

"""
    + SCHEMA_SECTION.format(
        image_id="the COCO image id, as text",
        order="the annotation file's order",
        category="the COCO category name",
        noun_phrase="the annotation's `noun_phrase` (or, with `--noun-phrase-from-category`, the"
        " category name where it is missing)",
        attributes="the annotation's `attributes` mapping, if any",
        negatives="the image entry's `negative_phrases`, if any",
    )
    + """
{counts}
## Dataset creation

`python scripts/prepare_coco_text.py --images DIR --annotations FILE.json --out OUT`. Masks
are rasterised exactly as pycocotools' `COCO.annToMask` does (tested); `area` is the mask's
pixel count, `bbox` the file's box clipped to the image (or the mask's box when absent).
Coordinates outside the image are clipped and zero-area objects dropped; both are counted in
the summary printed by the script and in the counts above.

## Limitations

- A phrase is only as good as the annotation: without `noun_phrase`, the category name
  stands in, which teaches nothing about attributes.
- Negative phrases are only those the file lists; an absent phrase is not proof of absence.

## Licence

Unknown: the licence is that of the images and annotations you prepared. Replace this section
and the `license` field before publishing.

## Citation

Cite the source of your images and annotations. For the COCO format: Lin et al., "Microsoft
COCO: Common Objects in Context", ECCV 2014.
"""
)

_JSON_POLYGONS_BODY = (
    """\
# Per-image JSON polygon dataset, in the sam_hf schema

Images with one JSON file each listing polygon instances with a label and attributes,
prepared for SAM2 (point/box/mask prompts) and SAM3 (text prompts).

## Dataset structure

- Input: `<root>/{train,val,test}/images/*` and `annotations/<same stem>.json` =
  `{"image_id", "width", "height", "instances": [{"instance_id", "label",
  "segmentation": {"polygon": [[x1, y1, ...], ...]}, "attributes": {...}}]}`.
  Output splits: `train`, `validation` (from `val/`, or carved from train with
  `--val-fraction`) and `test`, as present.

"""
    + SCHEMA_SECTION.format(
        image_id="the file's `image_id` (the file stem when absent)",
        order="the order of `instances` in the file",
        category="the instance's `label`",
        noun_phrase="the instance's `noun_phrase` if it has one, else its `label`",
        attributes="the instance's `attributes` mapping",
        negatives="the file's `negative_phrases`, if any",
    )
    + """
{counts}
## Dataset creation

`python scripts/prepare_json_polygons.py --source DIR --out OUT`. Polygons are rasterised
exactly as COCO polygons are (pycocotools); coordinates outside the image are clipped and
zero-area instances dropped, both counted. `scripts/convert_mineapple_to_coco_text.py` turns
the same data into COCO-text with phrases composed from the attributes.

## Limitations

- The label is the only phrase unless attributes are composed into phrases.
- A polygon cannot represent holes; overlapping instances each keep their full outline.

## Licence

Unknown: the licence is that of your images and annotations. Replace this section and the
`license` field before publishing.

## Citation

Cite the source of your images and annotations.
"""
)

_SACO_BODY = (
    """\
# SA-Co image annotations, in the sam_hf schema

SA-Co (Segment Anything with Concepts) pairs each image with noun phrases; every instance
matching a phrase has a mask, and phrases with no instance are recorded as absent. It is
SAM3's benchmark format.

## Dataset structure

- Input: an SA-Co json (COCO-derived: each `images[]` entry is an (image, `text_input`)
  pair, boxes normalised `[x, y, w, h]`, masks as RLE) and its image folder. Pairs of the
  same `file_name` are merged into one row. One split (`--split`, default `test`).

"""
    + SCHEMA_SECTION.format(
        image_id="the image's `file_name`",
        order="pair order, then annotation order, of the file",
        category="the file's category name (SA-Co has one), else the phrase",
        noun_phrase="the pair's `text_input`",
        attributes="empty unless annotations carry an `attributes` mapping",
        negatives="`text_input` of the image's pairs that have no annotation",
    )
    + """
{counts}
## Dataset creation

`python scripts/prepare_saco.py --images DIR --annotations FILE.json --out OUT`. Boxes are
scaled to pixels with the pair's width and height and clipped to the image; masks are kept
as the file's RLE (uncompressed RLE is compressed).

## Limitations

- SA-Co's evaluation (cgF1) scores phrase/image pairs; merged rows keep all the information
  (positives as objects, negatives as `negative_phrases`) but not the pair ids.

## Licence

Unknown here: follow the terms of the SA-Co release you downloaded and of its image sources.
Replace this section and the `license` field before publishing.

## Citation

Cite the SAM 3 paper (Meta, "SAM 3: Segment Anything with Concepts", 2025) and the image
sources named by the release.
"""
)

CARDS: dict[str, CardSpec] = {
    "minneapple": CardSpec(
        DatasetCardData(
            license="cc-by-nc-sa-3.0",
            pretty_name="MinneApple (sam_hf schema)",
            task_categories=["image-segmentation", "object-detection"],
            task_ids=["instance-segmentation"],
            size_categories=["1K<n<10K"],
            tags=[
                "agriculture",
                "orchard",
                "apple",
                "instance-segmentation",
                "sam2",
                "sam3",
                "sam_hf",
            ],
        ),
        _MINNEAPPLE_BODY,
    ),
    "synthetic_orchard": CardSpec(
        DatasetCardData(
            license="apache-2.0",
            pretty_name="Synthetic orchard (sam_hf)",
            task_categories=["image-segmentation", "object-detection"],
            task_ids=["instance-segmentation"],
            size_categories=["n<1K"],
            tags=[
                "synthetic",
                "agriculture",
                "orchard",
                "apple",
                "attributes",
                "sam2",
                "sam3",
                "sam_hf",
            ],
        ),
        _SYNTHETIC_BODY,
    ),
    "coco_text": CardSpec(
        DatasetCardData(
            license="unknown",
            pretty_name="COCO-text dataset (sam_hf schema)",
            task_categories=["image-segmentation", "object-detection"],
            task_ids=["instance-segmentation"],
            tags=["coco", "noun-phrases", "text-prompted-segmentation", "sam3", "sam_hf"],
        ),
        _COCO_TEXT_BODY,
    ),
    "json_polygons": CardSpec(
        DatasetCardData(
            license="unknown",
            pretty_name="Per-image JSON polygon dataset (sam_hf schema)",
            task_categories=["image-segmentation", "object-detection"],
            task_ids=["instance-segmentation"],
            tags=["polygons", "attributes", "sam2", "sam3", "sam_hf"],
        ),
        _JSON_POLYGONS_BODY,
    ),
    "saco": CardSpec(
        DatasetCardData(
            license="unknown",
            pretty_name="SA-Co image annotations (sam_hf schema)",
            task_categories=["image-segmentation", "object-detection"],
            task_ids=["instance-segmentation"],
            tags=[
                "sa-co",
                "noun-phrases",
                "negative-phrases",
                "text-prompted-segmentation",
                "sam3",
                "sam_hf",
            ],
        ),
        _SACO_BODY,
    ),
}

_NO_COUNTS = """\
## Counts

`prepare_*` replaces this paragraph with the number of images and objects per split of the
copy it prepared, and what it skipped or repaired.
"""


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return label
    return "1M<n<10M"


def _counts_section(report: Report) -> str:
    lines = ["## Counts", "", "| split | images | objects |", "|---|---|---|"]
    lines += [f"| {name} | {s.images} | {s.objects} |" for name, s in report.splits.items()]
    lines.append("")
    if report.skipped:
        lines.append(
            "Skipped while preparing (`--on-error skip`): "
            + ", ".join(f"{reason} {n}" for reason, n in sorted(report.skipped.items()))
            + "."
        )
    else:
        lines.append("Nothing was skipped while preparing.")
    if report.fixed:
        lines.append(
            "Repaired: "
            + ", ".join(f"{reason} {n}" for reason, n in sorted(report.fixed.items()))
            + "."
        )
    return "\n".join(lines) + "\n"


def render_card(name: str, report: Report | None = None) -> DatasetCard:
    """The card ``name`` (``minneapple``, ``synthetic_orchard``, ``coco_text``), with the counts of
    ``report`` when given (and a size category that matches them)."""
    if name not in CARDS:
        raise ValueError(f"unknown card {name!r}; choose from {sorted(CARDS)}")
    spec = CARDS[name]
    data = DatasetCardData(**spec.data.to_dict())
    if report is not None and report.splits:
        data.size_categories = [_size_category(report.images)]
    counts = _counts_section(report) if report is not None else _NO_COUNTS
    body = spec.body.replace("{counts}", counts)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


#: Files every prepared folder holds at its top (checked before converting, see below).
PREPARED_FILES = ("README.md", "dataset_dict.json")


def check_prepared_output(
    out: str | os.PathLike[str], command: str, *, overwrite: bool = False
) -> Path:
    """Fail before converting when ``out`` may not be written (see :func:`check_output`)."""
    return check_output(out, OutputRules(command, overwrite=overwrite, writes=PREPARED_FILES))


def save_prepared(
    dataset: datasets.DatasetDict,
    out: str | os.PathLike[str],
    card: str,
    report: Report,
    *,
    command: str,
    overwrite: bool = False,
) -> Path:
    """Save a converted dataset atomically with its card as ``README.md`` beside the data.

    ``command`` (the script's name) goes into the folder's ``.sam_hf_output.json`` marker; an
    existing ``out`` is replaced only as :func:`sam_hf.data.output.install_output` allows.
    """
    text = str(render_card(card, report))
    return save_atomically(
        dataset, out, extra_files={"README.md": text}, command=command, overwrite=overwrite
    )
