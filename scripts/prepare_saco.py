"""Prepare SA-Co image annotations (SAM3's concept benchmark format) as a saved DatasetDict.

    python scripts/prepare_saco.py --images DIR --annotations FILE.json --out OUT

Each ``images[]`` entry of an SA-Co file is an (image, ``text_input``) pair; pairs of the same
image become one row whose objects carry the phrase and whose ``negative_phrases`` list the
phrases without annotations. Normalised boxes are scaled to pixels.
"""

from __future__ import annotations

import argparse
import sys

from sam_hf.data.build import add_common_arguments, run_cli
from sam_hf.data.sources.saco import prepare_saco


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", required=True, help="folder the json's file_name entries are relative to"
    )
    parser.add_argument("--annotations", required=True, help="SA-Co json file")
    parser.add_argument("--out", required=True, help="output folder for save_to_disk")
    parser.add_argument("--split", default="test", help="name of the split written (default test)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(
        lambda: prepare_saco(
            args.images,
            args.annotations,
            args.out,
            split=args.split,
            on_error=args.on_error,
            cache_dir=args.cache_dir,
            overwrite=args.overwrite,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
