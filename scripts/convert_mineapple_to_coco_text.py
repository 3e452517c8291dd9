"""MinneApple or per-image JSON data -> COCO-text with a noun phrase per annotation.

    python scripts/convert_mineapple_to_coco_text.py --input DIR --output DIR \
        --attribute-templates sam_hf/assets/attribute_templates.yaml

Phrases are composed from each object's attributes by the templates ("{ripeness} {color}
{noun}" -> "ripe red apple"); objects without attributes (all of MinneApple's) get the bare
noun. Writes ``OUTPUT/images/<split>/...`` and ``OUTPUT/annotations/<split>.json``
(validation as ``val.json``), ready for ``scripts/prepare_coco_text.py``.
"""

from __future__ import annotations

import argparse
import sys
import time

from sam_hf.data.output import OVERWRITE_HELP
from sam_hf.data.report import ON_ERROR_CHOICES, ConversionError
from sam_hf.data.sources.coco_export import convert_to_coco_text, default_templates_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="MinneApple or per-image JSON root folder")
    parser.add_argument("--output", required=True, help="output folder (images/ and annotations/)")
    parser.add_argument(
        "--attribute-templates",
        default=None,
        help=f"templates YAML (default: the shipped {default_templates_path().name})",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="carve a validation split from train (default 0: no)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the validation draw (default 0)"
    )
    parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="raise")
    parser.add_argument(
        "--cache-dir", default=None, help="datasets cache folder (default: HF_DATASETS_CACHE)"
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    args = parser.parse_args(argv)
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error("--val-fraction must be in [0, 1)")
    start = time.perf_counter()
    try:
        report, written = convert_to_coco_text(
            args.input,
            args.output,
            args.attribute_templates,
            val_fraction=args.val_fraction,
            seed=args.seed,
            on_error=args.on_error,
            cache_dir=args.cache_dir,
            overwrite=args.overwrite,
        )
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    for split, path in written.items():
        print(f"  {split}: {path}")
    print(f"wrote {args.output} in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
