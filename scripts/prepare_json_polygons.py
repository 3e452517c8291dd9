"""Prepare per-image JSON polygon annotations as a cached, saved DatasetDict.

    python scripts/prepare_json_polygons.py --source DIR --out OUT

Reads ``<source>/{train,val,test}/images/*`` with ``annotations/<same stem>.json`` (instances
with a label, polygon segmentation and attributes), writes ``train`` / ``validation`` /
``test`` with ``save_to_disk(OUT)`` and a data card as ``OUT/README.md``.
"""

from __future__ import annotations

import argparse
import sys

from sam_hf.data.build import add_common_arguments, run_cli
from sam_hf.data.sources.jsonpoly import prepare_json_polygons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, help="root folder with train/, val/, test/")
    parser.add_argument("--out", required=True, help="output folder for save_to_disk")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="carve a validation split from train when there is no val/ folder (default 0: no)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the validation draw (default 0)"
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error("--val-fraction must be in [0, 1)")
    return run_cli(
        lambda: prepare_json_polygons(
            args.source,
            args.out,
            val_fraction=args.val_fraction,
            seed=args.seed,
            on_error=args.on_error,
            cache_dir=args.cache_dir,
            overwrite=args.overwrite,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
