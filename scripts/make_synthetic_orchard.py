#!/usr/bin/env python
"""Write the synthetic orchard in the MinneApple layout and as COCO-text, print a summary.

    python scripts/make_synthetic_orchard.py --out data/synthetic_orchard --num-images 64 \
        --seed 0 [--image-size 256 256] [--test-fraction 0.25] [--overwrite]

Writes ``OUT/minneapple/{train,test}/{images,masks}`` and
``OUT/coco_text/{images/, annotations/{train,val}.json}`` (val = the MinneApple test images).
The same seed and size always give byte-identical files. The logic lives in
``sam_hf.data.synthetic.orchard.make_synthetic_orchard``; this is only its command line.
"""

from __future__ import annotations

import argparse
import json
import sys

from sam_hf.data.synthetic.orchard import make_synthetic_orchard


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-images", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=(256, 256),
        metavar=("H", "W"),
        help="image height and width in pixels (default 256 256)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.25,
        help="share of images in minneapple/test and coco_text val (default 0.25)",
    )
    parser.add_argument(
        "--zoom",
        type=float,
        default=1.0,
        help="close-up factor >= 1: apples this many times larger, fewer per image (default 1)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing OUT/minneapple and OUT/coco_text folders: only the files this"
        " command writes (orchard_*.png, annotations/{train,val}.json) are replaced or deleted;"
        " other files there are kept",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = make_synthetic_orchard(
            args.out,
            num_images=args.num_images,
            seed=args.seed,
            image_size=tuple(args.image_size),
            test_fraction=args.test_fraction,
            overwrite=args.overwrite,
            zoom=args.zoom,
        )
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
