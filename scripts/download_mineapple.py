"""Download, verify and extract the MinneApple archives from the University of Minnesota.

    python scripts/download_mineapple.py --out /data/minneapple
    python scripts/prepare_mineapple.py --source /data/minneapple --out data/mineapple

Downloads resume where they stopped (HTTP Range). Each archive's MD5 is computed and written
beside it (``<archive>.md5``); pass ``--md5 detection=<hex>`` to enforce a known sum. Offline,
the script says so and how to place a hand-downloaded archive, which it then verifies and
extracts. Licence of the data: CC BY-NC-SA 3.0 US.
"""

from __future__ import annotations

import argparse
import sys

from sam_hf.data.output import OVERWRITE_HELP
from sam_hf.data.report import ConversionError
from sam_hf.data.sources.minneapple_download import (
    ARCHIVES,
    LANDING_PAGE,
    DownloadError,
    download_minneapple,
    remove_partial_downloads,
)


def _progress(name: str, done: int, total: int | None) -> None:
    if total:
        print(
            f"\r{name}: {done / 1e6:8.1f} / {total / 1e6:.1f} MB",
            end="",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(f"\r{name}: {done / 1e6:8.1f} MB", end="", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", required=True, help="folder for the archives and their extracted contents"
    )
    parser.add_argument(
        "--archives",
        nargs="+",
        choices=sorted(ARCHIVES),
        default=["detection"],
        help="which archives (default: detection; add test_data for the test masks)",
    )
    parser.add_argument(
        "--md5", action="append", default=[], metavar="NAME=HEX", help="expected MD5 of an archive"
    )
    parser.add_argument("--no-extract", action="store_true", help="download and verify only")
    parser.add_argument(
        "--restart", action="store_true", help="discard partial downloads instead of resuming"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="extract over a folder (OUT/detection...) that an earlier run did not extract: "
        + OVERWRITE_HELP.split(": ", 1)[1],
    )
    args = parser.parse_args(argv)
    md5 = {}
    for spec in args.md5:
        name, sep, digest = spec.partition("=")
        if not sep or name not in ARCHIVES or len(digest) != 32:
            parser.error(
                f"--md5 expects NAME=32-hex-digits with NAME in {sorted(ARCHIVES)}, got {spec!r}"
            )
        md5[name] = digest.lower()
    if args.restart:
        remove_partial_downloads(args.out)
    try:
        paths = download_minneapple(
            args.out,
            tuple(args.archives),
            md5=md5,
            extract=not args.no_extract,
            progress=None if args.quiet else _progress,
            overwrite=args.overwrite,
        )
    except (DownloadError, ConversionError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(file=sys.stderr)
    for path in paths:
        digest = path.with_name(path.name + ".md5").read_text().split()[0]
        print(f"{path}  md5 {digest}")
    unverified = [n for n in args.archives if n not in md5 and ARCHIVES[n].md5 is None]
    if unverified:
        print(
            f"note: no published MD5 is known to this script for {', '.join(unverified)}; compare the sums"
            f" above with the checksums listed on {LANDING_PAGE}"
        )
    if not args.no_extract:
        print(
            f"extracted into {args.out}; next: python scripts/prepare_mineapple.py --source {args.out} --out OUT"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
