"""Prepare MinneApple (or the synthetic orchard in its layout) as a cached, saved DatasetDict.

    python scripts/prepare_mineapple.py --source /data/minneapple --out data/mineapple

Reads ``<source>/{train,test}/{images,masks}`` or the archive's ``<source>/detection/...``,
writes ``train`` / ``validation`` / ``test`` with ``save_to_disk(OUT)`` and the data card as
``OUT/README.md``. A second run on unchanged files loads from the Arrow cache.
"""

from __future__ import annotations

import argparse
import sys

from sam_hf.data.build import add_common_arguments, run_cli
from sam_hf.data.sources.minneapple import prepare_minneapple


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, help="MinneApple root folder")
    parser.add_argument("--out", required=True, help="output folder for save_to_disk")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of train images held out as the validation split (default 0.1)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the validation draw (default 0)"
    )
    parser.add_argument(
        "--card",
        choices=("minneapple", "synthetic_orchard"),
        default="minneapple",
        help="data card written as OUT/README.md (default minneapple)",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error("--val-fraction must be in [0, 1)")
    return run_cli(
        lambda: prepare_minneapple(
            args.source,
            args.out,
            val_fraction=args.val_fraction,
            seed=args.seed,
            on_error=args.on_error,
            cache_dir=args.cache_dir,
            overwrite=args.overwrite,
            card=args.card,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
