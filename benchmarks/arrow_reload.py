"""What the Arrow cache saves: first conversion time over cached reload time of a prepare.

Both arms call ``sam_hf.data.sources.minneapple.convert_minneapple`` on the same synthetic orchard
(``--num-images`` frames of 720 x 1280, MinneApple's size, written once by
``make_synthetic_orchard`` before timing), in this process:

- *first*: into a fresh, empty ``cache_dir`` -- every image and instance mask is decoded,
  RLE-encoded and written to Arrow;
- *reload*: the identical call again on a ``cache_dir`` that already holds that
  conversion -- the fingerprint matches and the Arrow files are memory-mapped.

The script checks that each first call converted (report ``from_cache`` False) and each
reload came from the cache (``from_cache`` True) with the same rows. Rounds interleave the
arms (order alternating); the ratio is the median over rounds of first/reload, under wall
time (the first call's disk writes are part of its cost, and CPU time would leave them out).

    python benchmarks/arrow_reload.py [--num-images 40] [--rounds 5]

Goal: >= 50.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import _common as C

GOAL = 50.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=40, help="synthetic 720x1280 frames")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after 1 warm-up)")
    C.add_common_args(parser)
    args = parser.parse_args()
    C.set_threads(args.threads)
    C.quiet_libraries()

    from sam_hf.data.report import Report
    from sam_hf.data.sources.minneapple import convert_minneapple

    tmp = C.temp_dir("arrow")
    try:
        source = C.synthetic_minneapple(tmp, args.num_images, (1280, 720))
        caches: list[Path] = []
        reports: dict[str, list[Report]] = {"first": [], "reload": []}

        def convert(cache_dir: Path) -> tuple[Any, Report]:
            report = Report()
            dd = convert_minneapple(
                source, val_fraction=0.1, seed=0, cache_dir=cache_dir, report=report
            )
            return dd, report

        def first() -> None:
            cache = tmp / f"cache_{len(caches)}"
            caches.append(cache)
            reports["first"].append(convert(cache)[1])

        def reload() -> None:
            if not caches:  # the reload arm runs first in odd rounds: give it a cache
                first()
            reports["reload"].append(convert(caches[-1])[1])

        times = C.interleave([("first", first), ("reload", reload)], args.rounds, 1)
        for r in reports["first"]:
            if r.from_cache:
                raise AssertionError("a first conversion was served from a cache")
        for r in reports["reload"]:
            if not r.from_cache:
                raise AssertionError("a reload converted again instead of using the cache")
        ref = reports["first"][0]
        for r in reports["first"] + reports["reload"]:
            if (r.images, r.objects) != (ref.images, ref.objects):
                raise AssertionError("conversions disagree on images/objects")

        print(
            f"data: {args.num_images} synthetic orchard frames of 720x1280 px (H=1280, W=720), "
            f"{ref.images} images and {ref.objects} instance masks converted "
            f"(splits {', '.join(f'{k}={v.images}' for k, v in ref.splits.items())})"
        )
        print(
            f"{args.rounds} timed rounds (+1 warm-up), arms interleaved; every first call "
            "converted, every reload came from the cache (checked)"
        )
        C.print_machine()
        ratios = C.compare("first", times["first"], "reload", times["reload"], "s", 1.0)
        print(f"goal: >= {GOAL}; RATIO uses the wall clock")
        C.print_ratio("arrow_reload", ratios["wall"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
