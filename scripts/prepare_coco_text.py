"""Prepare a COCO json with noun phrases (COCO-text) as a cached, saved DatasetDict.

    python scripts/prepare_coco_text.py --images DIR --annotations FILE.json --out OUT

Polygons, compressed and uncompressed RLE and ``iscrowd`` are read as pycocotools reads them;
each annotation needs a ``noun_phrase`` unless ``--noun-phrase-from-category`` lets the
category name stand in. Writes one split (``--split``, default ``train``) with
``save_to_disk(OUT)`` and the data card as ``OUT/README.md``.
"""

from __future__ import annotations

import argparse
import sys

from sam_hf.data.build import add_common_arguments, run_cli
from sam_hf.data.sources.coco import prepare_coco_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", required=True, help="folder the json's file_name entries are relative to"
    )
    parser.add_argument("--annotations", required=True, help="COCO json file")
    parser.add_argument("--out", required=True, help="output folder for save_to_disk")
    parser.add_argument(
        "--split", default="train", help="name of the split written (default train)"
    )
    parser.add_argument(
        "--noun-phrase-from-category",
        action="store_true",
        help="use the category name where an annotation has no noun_phrase (default: error)",
    )
    parser.add_argument(
        "--card",
        choices=("coco_text", "synthetic_orchard"),
        default="coco_text",
        help="data card written as OUT/README.md (default coco_text)",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(
        lambda: prepare_coco_text(
            args.images,
            args.annotations,
            args.out,
            split=args.split,
            noun_phrase_from_category=args.noun_phrase_from_category,
            on_error=args.on_error,
            cache_dir=args.cache_dir,
            overwrite=args.overwrite,
            card=args.card,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
