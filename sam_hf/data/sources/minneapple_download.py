"""Download, verify and extract the official MinneApple archives (``scripts/download_mineapple.py``).

Downloads resume where they stopped (HTTP Range); each archive's MD5 is computed and stored
beside it. Extraction refuses members that would escape the target and installs each
top-level folder through :mod:`sam_hf.data.output`, so a folder this command did not write is
never replaced silently. The extracted tree is what :mod:`sam_hf.data.sources.minneapple`
converts.
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

from sam_hf.data.leftovers import clean_leftovers, make_temp_beside
from sam_hf.data.output import OutputRules, check_output, install_output

#: Names the writer in the ``.sam_hf_output.json`` marker of an extracted folder.
DOWNLOAD_COMMAND = "download_mineapple"

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
    rules = OutputRules(DOWNLOAD_COMMAND, overwrite=overwrite)
    dest.mkdir(parents=True, exist_ok=True)
    clean_leftovers(dest / archive.name)
    staging = make_temp_beside(dest / archive.name)
    try:
        _unpack(archive, staging)
        entries = sorted(staging.iterdir())
        for entry in entries:
            target = dest / entry.name
            if entry.is_dir():
                check_output(target, rules)
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
                install_output(entry, target, rules)
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
    :func:`~sam_hf.data.sources.minneapple.convert_minneapple` reads directly; ``overwrite`` as in :func:`extract_archive`.
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
