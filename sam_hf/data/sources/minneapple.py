"""MinneApple (instance-id PNG masks) -> the one schema, plus the official archive download.

Layouts accepted under ``root`` (``detection/`` is how ``detection.tar.gz`` unpacks):

- ``root/{train,test}/images/*.png`` with ``masks/*.png`` of the same names
- ``root/detection/{train,test}/...``
- a split with ``images/`` only (MinneApple's test split): rows with no objects
- ``root/{validation,val}/...``: used as the validation split instead of carving one
- ``root/test_data/segmentation/{images,masks}`` (``test_data.zip``, the test masks released
  later): used for the test split when the test split found otherwise has no masks

Masks are single-channel 8- or 16-bit images, 0 = background and 1..N = instance ids. Every id
present becomes exactly one object (ascending id order) whose RLE decodes to ``mask == id``.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from scipy import ndimage

from sam_hf.data import rle
from sam_hf.data.cards.dataset_card import check_prepared_output, save_prepared
from sam_hf.data.images import orient_label_map, read_for_conversion
from sam_hf.data.output import (
    ConversionError,
    ErrorPolicy,
    Report,
    build_planned_splits,
    check_on_error,
    check_output,
    clean_leftovers,
    finish,
    image_value,
    install_output,
    list_images,
    make_temp_beside,
    read_instance_mask,
)
from sam_hf.data.schema import make_object

#: Names the writer in the ``.sam_hf_output.json`` marker of a prepared folder.
PREPARE_COMMAND = "prepare_mineapple"
DOWNLOAD_COMMAND = "download_mineapple"

#: Bump when the rows this converter writes change for the same files.
VERSION = "minneapple-2"

CATEGORY = "apple"
SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}


@dataclass(frozen=True)
class SplitSource:
    """Where one split's files are: ``images`` and, when annotated, ``masks``."""

    name: str
    images: Path
    masks: Path | None


def find_splits(root: str | os.PathLike[str]) -> dict[str, SplitSource]:
    """Locate the split folders of a MinneApple tree (see the module docstring for layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(
            "source folder not found", file=root, reason="missing_file", skippable=False
        )
    found: dict[str, SplitSource] = {}
    for split, names in SPLIT_DIRS.items():
        for base in (root, root / "detection"):
            hit = next((base / n for n in names if (base / n / "images").is_dir()), None)
            if hit is not None:
                masks = hit / "masks"
                found[split] = SplitSource(split, hit / "images", masks if masks.is_dir() else None)
                break
    extra = root / "test_data" / "segmentation"
    if (extra / "images").is_dir() and (extra / "masks").is_dir():
        if "test" not in found or found["test"].masks is None:
            found["test"] = SplitSource("test", extra / "images", extra / "masks")
    if not found:
        hint = ""
        if (root / "images").is_dir():
            hint = " (found images/ directly under it: move it to <root>/train/ or <root>/test/)"
        raise ConversionError(
            "no MinneApple split found: expected <root>/{train,test}/images/ (optionally with"
            " masks/) or <root>/detection/{train,test}/images/" + hint,
            file=root,
            reason="empty_dataset",
            skippable=False,
        )
    return found


def _plan_split(source: SplitSource, policy: ErrorPolicy) -> list[dict[str, Any]]:
    """Pair images with masks by name; duplicates, orphan masks and missing masks are errors."""
    items: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for image in list_images(source.images):
        stem = image.stem
        if stem in seen:
            policy.fail(
                ConversionError(
                    f"duplicate image id {stem!r} (also {seen[stem].name})",
                    file=image,
                    record=f"image {stem}",
                    reason="duplicate_image_id",
                )
            )
            continue
        seen[stem] = image
        mask = None
        if source.masks is not None:
            candidates = [source.masks / image.name, source.masks / f"{stem}.png"]
            mask = next((m for m in candidates if m.is_file()), None)
            if mask is None:
                policy.fail(
                    ConversionError(
                        f"no mask {source.masks / image.name} for this image",
                        file=image,
                        record=f"image {stem}",
                        reason="missing_mask",
                    )
                )
                continue
        items.append(
            {
                "image": str(image),
                "mask": None if mask is None else str(mask),
                "image_id": stem,
                "file": str(image),
                "record": f"image {stem}",
            }
        )
    if source.masks is not None:
        for mask in list_images(source.masks):
            if mask.stem not in seen:
                policy.fail(
                    ConversionError(
                        f"mask has no image in {source.images}",
                        file=mask,
                        record=f"image id {mask.stem}",
                        reason="unknown_image_id",
                    )
                )
    return items


def instance_rles(label_map: np.ndarray) -> tuple[list[int], list[dict[str, Any]]]:
    """Ids present in an instance-id map (ascending) and the compressed RLE of ``map == id``.

    Equivalent to ``rle.encode(label_map == i)`` for every id, but each RLE is built from the
    pixels inside the instance's bounding box only: run lengths in column-major (COCO) order
    are read off the pixel positions, then compressed by pycocotools. A 720x1280 frame with
    100+ apples would otherwise compare and encode a full-size mask per apple.
    """
    height, width = label_map.shape
    ids, rles = [], []
    for index, box in enumerate(ndimage.find_objects(label_map)):
        if box is None:
            continue
        inst = index + 1
        rows, cols = box
        cols_in, rows_in = np.nonzero((label_map[box] == inst).T)  # column-major pixel order
        pos = (cols_in + cols.start).astype(np.int64) * height + (rows_in + rows.start)
        breaks = np.flatnonzero(np.diff(pos) != 1)
        starts = np.concatenate(([pos[0]], pos[breaks + 1]))
        ends = np.concatenate((pos[breaks], [pos[-1]])) + 1
        zeros = starts - np.concatenate(([0], ends[:-1]))
        counts = np.stack([zeros, ends - starts], axis=1).ravel().tolist()
        if ends[-1] < height * width:  # no trailing empty run: same string as pycocotools' encode
            counts.append(int(height * width - ends[-1]))
        ids.append(inst)
        rles.append(rle.from_uncompressed({"size": [height, width], "counts": counts}))
    return ids, rles


def masks_to_objects(label_map: np.ndarray) -> list[dict[str, Any]]:
    """One schema object per non-zero id of an instance-id map, in ascending id order."""
    _, rles = instance_rles(label_map)
    areas = rle.area(rles)
    boxes = rle.to_bbox(rles)
    return [
        make_object(r, list(b), float(a), CATEGORY, noun_phrase=CATEGORY)
        for r, a, b in zip(rles, areas, boxes)
    ]


def _convert_item(item: dict[str, Any], policy: ErrorPolicy) -> dict[str, Any]:
    stored = read_for_conversion(item["image"], item["record"])
    objects: list[dict[str, Any]] = []
    if item["mask"] is not None:
        # the mask's size says which grid it was drawn on (sam_hf.data.images: EXIF rule)
        label_map = read_instance_mask(item["mask"], item["record"], None)
        frame = stored.masks_follow(
            (label_map.shape[1], label_map.shape[0]), file=item["mask"], record=item["record"]
        )
        objects = masks_to_objects(orient_label_map(label_map, stored, frame))
    stored.count(policy.report)
    return {
        "image": image_value(stored.data),
        "image_id": item["image_id"],
        "width": stored.width,
        "height": stored.height,
        "objects": objects,
        "negative_phrases": [],
    }


def convert_minneapple(
    source: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    report: Report | None = None,
) -> datasets.DatasetDict:
    """MinneApple tree -> ``DatasetDict`` with splits ``train`` / ``validation`` / ``test``.

    ``validation`` is carved from ``train`` (``val_fraction`` of its images, drawn with
    ``seed``) unless the tree has its own validation folder. ``report``, if given, receives the
    counts (per split, skips, fixes) for the summary.
    """
    check_on_error(on_error)
    report = report if report is not None else Report()
    report.source = str(source)
    sources = find_splits(source)
    plans: dict[str, tuple[list[dict[str, Any]], Report]] = {}
    for name, src in sources.items():
        plan_report = Report()
        plans[name] = (_plan_split(src, ErrorPolicy(on_error, plan_report)), plan_report)
    built = build_planned_splits(
        plans,
        _convert_item,
        source=source,
        kind="minneapple",
        version=VERSION,
        files_of=lambda it: [it["image"]] + ([it["mask"]] if it["mask"] else []),
        val_fraction=val_fraction,
        seed=seed,
        on_error=on_error,
        report=report,
        cache_dir=cache_dir,
    )
    return finish(built, report, source)


def prepare_minneapple(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = None,
    card: str = "minneapple",
    overwrite: bool = False,
) -> tuple[Report, Path]:
    """Convert a MinneApple tree and save it (``save_to_disk``) with its card as README.md.

    ``card="synthetic_orchard"`` for the synthetic orchard written in the MinneApple layout.
    An existing ``out`` that this command did not write is refused before converting, unless
    ``overwrite`` (which still never deletes files sam_hf did not write).
    """
    check_prepared_output(out, PREPARE_COMMAND, overwrite=overwrite)
    report = Report()
    dataset = convert_minneapple(
        source,
        val_fraction=val_fraction,
        seed=seed,
        on_error=on_error,
        cache_dir=cache_dir,
        report=report,
    )
    return report, save_prepared(
        dataset, out, card, report, command=PREPARE_COMMAND, overwrite=overwrite
    )


# ---------------------------------------------------------------------------------------------
# Download of the official archives
# ---------------------------------------------------------------------------------------------

#: Landing page of the dataset (Data Repository for the University of Minnesota).
LANDING_PAGE = "https://conservancy.umn.edu/handle/11299/206575"


@dataclass(frozen=True)
class Archive:
    """One downloadable MinneApple archive; ``md5`` is None where no published sum is known."""

    name: str
    url: str
    filename: str
    md5: str | None
    description: str


# The bitstream URLs are the ones the repository published for handle 11299/206575 (as cited by
# third-party loaders; the repository has since moved to a newer DSpace that redirects old
# links). We could not check them from this machine (no internet), nor find published MD5 sums:
# ``md5`` stays None and the computed sum is printed and stored beside the archive so it can be
# compared with the checksum the landing page lists for each file.
ARCHIVES: dict[str, Archive] = {
    "detection": Archive(
        "detection",
        "https://conservancy.umn.edu/bitstream/handle/11299/206575/detection.tar.gz?sequence=2&isAllowed=y",
        "detection.tar.gz",
        None,
        "detection and segmentation: 670 train images with instance masks, 331 test images",
    ),
    "test_data": Archive(
        "test_data",
        "https://conservancy.umn.edu/bitstream/handle/11299/206575/test_data.zip?sequence=16&isAllowed=y",
        "test_data.zip",
        None,
        "test labels for counting, detection and segmentation (released later)",
    ),
    "counting": Archive(
        "counting",
        "https://conservancy.umn.edu/bitstream/handle/11299/206575/counting.tar.gz?sequence=1&isAllowed=y",
        "counting.tar.gz",
        None,
        "patch-based fruit counting (not used by sam_hf)",
    ),
}


class DownloadError(RuntimeError):
    """A download that cannot complete (offline, HTTP error, checksum mismatch)."""


def md5sum(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None = None,
    timeout: float = 60.0,
    opener: Callable[..., Any] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request.

    A server that ignores the Range header (status 200) restarts the file from zero. With
    ``md5`` the finished file must match it, or it is removed and :class:`DownloadError` says so.
    ``opener`` defaults to ``urllib.request.urlopen`` (tests pass a fake one).
    """
    dest = Path(dest)
    opener = opener or urllib.request.urlopen
    stale = ""
    if dest.is_file():  # finished earlier or placed by hand: verify instead of downloading
        try:
            return _verify(dest, md5)
        except DownloadError as e:  # wrong sum: _verify removed it, download it again
            stale = f" Note: {e}."
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "sam_hf-downloader"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = opener(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # range past the end: the partial file is already complete
            os.replace(part, dest)
            return _verify(dest, md5)
        raise DownloadError(f"HTTP {e.code} {e.reason} while downloading {url}.{stale}") from None
    except OSError as e:  # URLError, timeouts and refused connections are all OSErrors
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot reach {urllib.parse.urlsplit(url).netloc} ({reason}); you seem to be offline"
            f" or the server is down. Download {dest.name} by hand from {LANDING_PAGE}, put it at"
            f" {dest} and run this script again: it will verify and extract it.{stale}"
        ) from None
    with response:
        status = getattr(response, "status", None) or response.getcode()
        mode = "ab" if have and status == 206 else "wb"
        done = have if mode == "ab" else 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None else None
        try:
            with open(part, mode) as f:
                while block := response.read(1 << 20):
                    f.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except OSError as e:
            raise DownloadError(
                f"download of {url} interrupted after {done} bytes ({e}); run again to resume"
            ) from None
    if total is not None and done != total:
        raise DownloadError(
            f"download of {url} incomplete ({done} of {total} bytes); run again to resume"
        )
    os.replace(part, dest)
    return _verify(dest, md5)


def _verify(path: Path, md5: str | None) -> Path:
    digest = md5sum(path)
    path.with_name(path.name + ".md5").write_text(f"{digest}  {path.name}\n")
    if md5 is not None and digest != md5.lower():
        path.unlink()
        raise DownloadError(
            f"md5 mismatch for {path.name}: expected {md5}, got {digest}; file removed"
        )
    return path


def extract_archive(
    archive: str | os.PathLike[str], dest: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Extract a .tar.gz or .zip into ``dest``, refusing members that would escape it.

    The archive is unpacked into a temporary folder inside ``dest``; each top-level folder it
    holds (``detection/``...) is then renamed into place with
    :func:`sam_hf.data.output.install_output`: one that an earlier extraction wrote is
    replaced, any other is refused unless ``overwrite`` (which keeps files sam_hf did not
    write). A top-level file is moved in only where ``dest`` has none or the same bytes.
    Every target is checked before anything in ``dest`` changes.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    clean_leftovers(dest / archive.name)
    staging = make_temp_beside(dest / archive.name)
    try:
        _unpack(archive, staging)
        entries = sorted(staging.iterdir())
        for entry in entries:
            target = dest / entry.name
            if entry.is_dir():
                check_output(target, DOWNLOAD_COMMAND, overwrite=overwrite)
            elif target.exists() and not (
                target.is_file() and filecmp.cmp(entry, target, shallow=False)
            ):
                raise DownloadError(
                    f"{target} exists and differs from {entry.name} in {archive.name}; move it"
                    " away and run again"
                )
        for entry in entries:
            target = dest / entry.name
            if entry.is_dir():
                install_output(entry, target, DOWNLOAD_COMMAND, overwrite=overwrite)
            elif not target.exists():
                os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _unpack(archive: Path, dest: Path) -> None:
    root = dest.resolve()

    def _inside(name: str) -> bool:
        target = (root / name).resolve()
        return target == root or root in target.parents

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            bad = [n for n in zf.namelist() if not _inside(n)]
            if bad:
                raise DownloadError(f"{archive}: unsafe member path {bad[0]!r}")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            bad = [m.name for m in members if not _inside(m.name) or m.issym() or m.islnk()]
            if bad:
                raise DownloadError(f"{archive}: unsafe member {bad[0]!r}")
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # Python < 3.10.12: members were checked above
                tf.extractall(dest, members=members)
    else:
        raise DownloadError(f"{archive}: not a tar or zip archive")


def download_minneapple(
    out: str | os.PathLike[str],
    names: tuple[str, ...] = ("detection",),
    *,
    md5: dict[str, str] | None = None,
    extract: bool = True,
    opener: Callable[..., Any] | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Download (resumably), verify and extract MinneApple archives into ``out``.

    ``md5`` maps archive names to expected sums (overriding the built-in table). Extraction of
    ``detection.tar.gz`` gives ``out/detection/{train,test}/...``, which
    :func:`convert_minneapple` reads directly; ``overwrite`` as in :func:`extract_archive`.
    """
    out = Path(out)
    paths = []
    for name in names:
        if name not in ARCHIVES:
            raise DownloadError(f"unknown archive {name!r}; choose from {sorted(ARCHIVES)}")
        arc = ARCHIVES[name]
        expected = (md5 or {}).get(name, arc.md5)
        cb = None if progress is None else (lambda d, t, _n=name: progress(_n, d, t))
        path = download_file(arc.url, out / arc.filename, md5=expected, opener=opener, progress=cb)
        if extract:
            extract_archive(path, out, overwrite=overwrite)
        paths.append(path)
    return paths


def remove_partial_downloads(out: str | os.PathLike[str]) -> None:
    """Delete ``*.part`` files left by interrupted downloads (to restart from zero)."""
    for part in Path(out).glob("*.part"):
        part.unlink()


__all__ = [
    "ARCHIVES",
    "Archive",
    "DownloadError",
    "SplitSource",
    "convert_minneapple",
    "download_file",
    "download_minneapple",
    "extract_archive",
    "find_splits",
    "masks_to_objects",
    "md5sum",
    "remove_partial_downloads",
]
