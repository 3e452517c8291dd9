"""How every converter builds its splits: plan, fingerprint, Arrow cache, atomic save.

Every converter (MinneApple, per-image JSON polygons, COCO-text, SA-Co) follows the same plan:

1. *Plan* (cheap, every run): list the input files, parse the annotation json, check what can be
   checked without decoding pixels, and derive a fingerprint from the file list (path, size,
   mtime), the options and the converter version.
2. *Generate* (only when the fingerprint is new): a top-level generator decodes the images and
   masks and yields rows in the one schema (:data:`sam_hf.data.schema.FEATURES`);
   ``datasets.Dataset.from_generator`` writes them to an Arrow cache keyed by the fingerprint,
   so an identical re-run memory-maps that cache instead of decoding anything.
3. *Save*: ``save_to_disk`` into a temporary folder beside the output, renamed into place at
   the end, so a failure never leaves a partial dataset behind.

Bad input raises :class:`~sam_hf.data.report.ConversionError` (see :mod:`sam_hf.data.report`
for skipping and counting); the generator persists the :class:`~sam_hf.data.report.Report`
beside the cache, so a run that loads from the cache prints the same summary as the run that
built it. The checks made while planning are in :mod:`sam_hf.data.checks`, the output folder
rules in :mod:`sam_hf.data.output`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc

import sam_hf
from sam_hf.data.output import OVERWRITE_HELP, OutputRules, atomic_output, resolve_output
from sam_hf.data.report import (
    ON_ERROR_CHOICES,
    ConversionError,
    ErrorPolicy,
    Report,
    SplitStats,
    check_on_error,
)
from sam_hf.data.schema import FEATURES

#: Bump when the rows any converter writes change for the same input (invalidates every cache).
CONVERT_VERSION = "2"

#: Image rows hold whole encoded images (a MinneApple frame is ~1.5 MB): keep Arrow write
#: batches small so a conversion's memory does not grow with the batch size.
WRITER_BATCH_SIZE = 32


def _features_digest() -> str:
    return hashlib.sha256(json.dumps(FEATURES.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def file_signature(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime in ns) of each file, sorted; a missing file gets -1s."""
    out = []
    for p in {str(Path(p).absolute()) for p in paths}:
        try:
            st = os.stat(p)
            out.append((p, int(st.st_size), int(st.st_mtime_ns)))
        except OSError:
            out.append((p, -1, -1))
    return sorted(out)


def fingerprint(
    kind: str,
    version: str,
    split: str,
    files: Iterable[str | os.PathLike[str]],
    options: dict[str, Any],
) -> str:
    """Stable id of one split's conversion: inputs' paths, sizes, mtimes, options and versions.

    Identical inputs give the same id in any process, so the Arrow cache is found again;
    touching a file, changing an option or bumping a converter version gives a new one.
    """
    payload = {
        "kind": kind,
        "converter_version": version,
        "convert_version": CONVERT_VERSION,
        "sam_hf": sam_hf.__version__,
        "datasets": datasets.__version__,
        "features": _features_digest(),
        "split": split,
        "options": options,
        "files": file_signature(files),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return f"sam_hf-{kind}-{hashlib.sha256(blob).hexdigest()[:24]}"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The datasets cache folder (``HF_DATASETS_CACHE`` unless given)."""
    return Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE)


#: fingerprint -> times its generator ran in this process (tells a cache hit from a build).
_GENERATOR_RUNS: Counter[str] = Counter()


def run_generator(
    items: Iterable[dict[str, Any]],
    convert_item: ConvertItem,
    *,
    plan_report: dict[str, Any],
    on_error: str,
    report_path: str,
    fingerprint: str,
) -> Iterator[dict[str, Any]]:
    """Body shared by the converters' generators: convert items, count skips, persist the report.

    ``convert_item`` returns a schema row, or ``None`` when the item was skipped (it calls
    ``policy.fail`` for that). Any other exception is wrapped into a :class:`ConversionError`
    naming the item, so even an unforeseen failure says where it happened.
    """
    _GENERATOR_RUNS[fingerprint] += 1
    report = Report.from_dict(plan_report)
    policy = ErrorPolicy(on_error, report)
    for item in items:
        try:
            row = convert_item(item, policy)
        except ConversionError as e:
            policy.fail(e)
            continue
        except Exception as e:  # re-raised with the record it happened in
            error = ConversionError(
                f"unexpected {type(e).__name__}: {e}",
                file=item.get("file"),
                record=item.get("record"),
                reason="unexpected_error",
            )
            error.__cause__ = e  # keep the original traceback for bug reports
            policy.fail(error)
            continue
        if row is not None:
            yield row
    save_report(report, report_path)


def save_report(report: Report, path: str | os.PathLike[str]) -> None:
    """Write a report json atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=1, sort_keys=True))
    os.replace(tmp, path)


def _conversion_error_in(exc: BaseException) -> ConversionError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ConversionError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


#: A converter's per-item function: planned item -> schema row, or None when skipped.
ConvertItem = Callable[[dict[str, Any], ErrorPolicy], dict[str, Any] | None]


def build_planned_splits(
    plans: dict[str, tuple[list[dict[str, Any]], Report]],
    convert_item: ConvertItem,
    *,
    source: str | os.PathLike[str],
    kind: str,
    version: str,
    files_of: Callable[[dict[str, Any]], list[str]],
    val_fraction: float,
    seed: int,
    on_error: str,
    report: Report,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, datasets.Dataset | None]:
    """Shared tail of the folder converters (MinneApple, per-image JSON).

    Carves a seeded ``validation`` split from ``train`` (``val_fraction``) unless the tree has
    its own, refuses an empty dataset, then builds each planned split through
    :func:`build_split` (so each split has its own Arrow cache entry). ``files_of(item)``
    lists the files an item reads; their sizes and mtimes enter the cache fingerprint.
    """
    if "validation" in plans:
        if val_fraction:
            report.notes.append(
                "validation split taken from its own folder; val_fraction not applied"
            )
    elif val_fraction and "train" in plans:
        train_items, train_report = plans["train"]
        held = seeded_split([it["image_id"] for it in train_items], val_fraction, seed)
        if held:
            plans["train"] = (
                [it for it in train_items if it["image_id"] not in held],
                train_report,
            )
            plans["validation"] = ([it for it in train_items if it["image_id"] in held], Report())
    if not any(items for items, _ in plans.values()) and not any(
        r.skipped for _, r in plans.values()
    ):
        raise ConversionError(
            "empty dataset: no images found in any split",
            file=source,
            reason="empty_dataset",
            skippable=False,
        )
    options = {"val_fraction": val_fraction, "seed": seed, "source": str(Path(source).absolute())}
    built: dict[str, datasets.Dataset | None] = {}
    for name in ("train", "validation", "test"):
        if name not in plans:
            continue
        items, plan_report = plans[name]
        built[name], split_report = build_split(
            convert_item,
            kind=kind,
            version=version,
            split=name,
            items=items,
            files=[f for it in items for f in files_of(it)],
            options=options,
            on_error=on_error,
            plan_report=plan_report,
            cache_dir=cache_dir,
        )
        report.merge(split_report)
    return built


def build_split(
    convert_item: ConvertItem,
    *,
    kind: str,
    version: str,
    split: str,
    items: list[dict[str, Any]],
    files: Iterable[str | os.PathLike[str]],
    options: dict[str, Any],
    on_error: str,
    plan_report: Report | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[datasets.Dataset | None, Report]:
    """Build (or load from the Arrow cache) one split; ``None`` if every item was skipped.

    ``convert_item`` (a converter's top-level function, see :func:`run_generator`) turns each
    planned item into a row inside :func:`run_generator`. The fingerprint goes to
    ``from_generator`` as the dataset id, so datasets hashes neither the (possibly large) items
    nor the function.
    """
    check_on_error(on_error)
    if not items:  # nothing survived planning: no generator run, no empty cache entry
        report = Report.from_dict((plan_report or Report()).to_dict())
        report.splits = {split: SplitStats(0, 0, False)}
        return None, report
    fp = fingerprint(kind, version, split, files, {**options, "on_error": on_error})
    cache = resolve_cache_dir(cache_dir)
    report_path = cache / "sam_hf_reports" / f"{fp}.json"
    runs_before = _GENERATOR_RUNS[fp]
    gen_kwargs = {
        # a tuple, not a list: datasets splits list-valued gen_kwargs into one shard (and one
        # generator call) per element, which would split the report too
        "items": tuple(items),
        "convert_item": convert_item,
        "on_error": on_error,
        "plan_report": (plan_report or Report()).to_dict(),
        "report_path": str(report_path),
        "fingerprint": fp,
    }
    dataset: datasets.Dataset | None
    try:
        dataset = datasets.Dataset.from_generator(
            run_generator,
            features=FEATURES,
            gen_kwargs=gen_kwargs,
            cache_dir=str(cache),
            fingerprint=fp,
            split=datasets.NamedSplit(split),
            writer_batch_size=WRITER_BATCH_SIZE,
        )
    except Exception as e:
        err = _conversion_error_in(e)
        if err is not None:  # drop datasets' wrapper; keep the cause of an unexpected error
            raise err from err.__cause__
        if isinstance(e, ValueError) and "corresponds to no data" in str(e):
            dataset = None  # every item was skipped: an empty split
        else:
            raise
    from_cache = _GENERATOR_RUNS[fp] == runs_before
    if report_path.is_file():
        report = Report.from_dict(json.loads(report_path.read_text()))
    else:  # cache built by another tool or the report was deleted: counts of rows still hold
        report = Report(notes=[f"{split}: skip counts unavailable (report missing from the cache)"])
    if dataset is None:
        stats = SplitStats(0, 0, from_cache)
    else:
        lengths = pc.list_value_length(dataset.data.column("objects"))
        n_obj = pc.sum(lengths).as_py() or 0
        stats = SplitStats(len(dataset), int(n_obj), from_cache)
    report.splits = {split: stats}
    return dataset, report


def seeded_split(names: list[str], fraction: float, seed: int) -> set[str]:
    """Names drawn (without replacement, seeded) for a held-out split carved from ``names``.

    Order-independent: the names are sorted first, so the same files give the same split
    whatever order the file system lists them in. At least one name is drawn when the fraction
    is positive and two or more names exist; at least one is always left behind.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    names = sorted(names)
    n = len(names)
    if fraction == 0.0 or n < 2:
        return set()
    k = min(max(int(round(fraction * n)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return {names[i] for i in order[:k]}


def finish(
    splits: dict[str, datasets.Dataset | None], report: Report, source: str | os.PathLike[str]
) -> datasets.DatasetDict:
    """Assemble the DatasetDict, dropping splits that ended up empty; empty overall is an error."""
    kept = {name: ds for name, ds in splits.items() if ds is not None and len(ds) > 0}
    for name in splits:
        if name not in kept:
            report.notes.append(f"split {name!r} is empty after skipping and was left out")
    if not kept:
        raise ConversionError(
            "empty dataset: no image could be converted"
            + (" (every record was skipped)" if report.skipped else ""),
            file=source,
            reason="empty_dataset",
            skippable=False,
        )
    return datasets.DatasetDict(kept)


def save_atomically(
    dataset: datasets.DatasetDict | datasets.Dataset,
    out: str | os.PathLike[str],
    extra_files: dict[str, str] | None = None,
    *,
    command: str = "save_atomically",
    overwrite: bool = False,
) -> Path:
    """``save_to_disk`` into a temporary folder beside ``out``, then rename it into place.

    ``extra_files`` maps file names to text written next to the dataset (the data card). An
    existing ``out`` is replaced only as :func:`sam_hf.data.output.install_output` allows, so a typo in ``--out``
    cannot delete unrelated files.
    """
    writes = (*(extra_files or {}), "dataset_dict.json")
    with atomic_output(out, OutputRules(command, overwrite=overwrite, writes=writes)) as tmp:
        dataset.save_to_disk(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return resolve_output(out)


# ---------------------------------------------------------------------------------------------
# Command-line plumbing shared by scripts/prepare_*.py
# ---------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--on-error``, ``--cache-dir`` and ``--overwrite``, spelled the same in every prepare script."""
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="raise",
        help="raise: stop at the first bad record (default); skip: leave bad records out, count"
        " them and list them in the summary",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="datasets cache folder for the Arrow files (default: HF_DATASETS_CACHE)",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def run_cli(run: Callable[[], tuple[Report, Path]]) -> int:
    """Run a conversion for a script: print its summary, or the error; return the exit code.

    Bad input exits with 2 and the :class:`ConversionError` message, which names the file and
    the record; nothing is left at the output path (saves are atomic).
    """
    start = time.perf_counter()
    try:
        report, out = run()
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"saved to {out} in {time.perf_counter() - start:.2f} s")
    return 0
