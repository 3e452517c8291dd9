"""What a conversion found wrong and what it did about it.

Bad input raises :class:`ConversionError`, whose message names the file and the record. With
``on_error="skip"`` the :class:`ErrorPolicy` turns the skippable cases into counted skips
instead; repairs made in every mode (clipped coordinates, dropped zero-area objects, images
turned upright) are counted too. The counts live in a :class:`Report`, which the converters
persist beside their Arrow cache (:mod:`sam_hf.data.build`) so a run that loads from the cache
prints the same summary as the run that built it. This module is the bottom of the converter
stack: the image readers, the input checks and the output folders all raise its error.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ON_ERROR_CHOICES = ("raise", "skip")

#: How many example records a summary lists per reason.
MAX_EXAMPLES = 5


class ConversionError(ValueError):
    """Bad input, with the file and the record it was found in.

    ``reason`` is a short stable key (``"corrupt_image"``, ``"unknown_image_id"``...) under which
    ``on_error="skip"`` counts the record; ``skippable=False`` marks problems no skip can fix
    (an empty dataset, an unreadable annotation file).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike[str] | None = None,
        record: str | None = None,
        reason: str = "invalid_record",
        skippable: bool = True,
    ) -> None:
        self.detail = message
        self.file = None if file is None else str(file)
        self.record = record
        self.reason = reason
        self.skippable = skippable
        super().__init__(self.format())

    def format(self) -> str:
        """``"<file>: <record>: <message>"`` with absent parts left out."""
        return ": ".join(p for p in (self.file, self.record, self.detail) if p)

    def where(self) -> str:
        """``"<file>: <record>"``: the short form used in summaries."""
        return ": ".join(p for p in (self.file, self.record) if p) or self.detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword-only arguments do not survive pickling by default (datasets
        # may pass them between processes); rebuild from the same fields.
        return (_rebuild_error, (self.detail, self.file, self.record, self.reason, self.skippable))


def _rebuild_error(
    detail: str, file: str | None, record: str | None, reason: str, skippable: bool
) -> ConversionError:
    return ConversionError(detail, file=file, record=record, reason=reason, skippable=skippable)


@dataclass
class SplitStats:
    """What one split ended up with."""

    images: int = 0
    objects: int = 0
    from_cache: bool = False


@dataclass
class Report:
    """Counts of one conversion: rows per split, skips and fixes by reason, a few examples each.

    ``skipped`` counts records left out under ``on_error="skip"``; ``fixed`` counts repairs made
    in every mode (``clipped_coordinates``, ``zero_area_dropped``).
    """

    source: str = ""
    splits: dict[str, SplitStats] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    fixed: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # -- recording ---------------------------------------------------------------------------
    def _example(self, reason: str, text: str) -> None:
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < MAX_EXAMPLES:
            bucket.append(text)

    def skip(self, error: ConversionError) -> None:
        """Count one skipped record under its reason."""
        self.skipped[error.reason] += 1
        self._example(error.reason, error.format())

    def fix(self, reason: str, where: str) -> None:
        """Count one repaired record (clipped coordinates, dropped zero-area object)."""
        self.fixed[reason] += 1
        self._example(reason, where)

    def merge(self, other: Report) -> None:
        """Add another report's counts (one split's) to this one."""
        self.splits.update(other.splits)
        self.skipped.update(other.skipped)
        self.fixed.update(other.fixed)
        for reason, texts in other.examples.items():
            for text in texts:
                self._example(reason, text)
        self.notes.extend(n for n in other.notes if n not in self.notes)

    # -- totals and text ---------------------------------------------------------------------
    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())

    @property
    def objects(self) -> int:
        return sum(s.objects for s in self.splits.values())

    @property
    def from_cache(self) -> bool:
        """True when every split was loaded from the Arrow cache (nothing was decoded)."""
        return bool(self.splits) and all(s.from_cache for s in self.splits.values())

    def summary(self) -> str:
        """Human summary: images, objects, skipped and fixed by reason."""
        lines = [f"Converted {self.source}" if self.source else "Conversion summary"]
        for name, s in self.splits.items():
            origin = "loaded from Arrow cache" if s.from_cache else "converted"
            lines.append(f"  {name}: {s.images} images, {s.objects} objects ({origin})")
        lines.append(f"  total: {self.images} images, {self.objects} objects")
        if self.skipped:
            lines.append(f"  skipped by reason ({sum(self.skipped.values())} records):")
            lines.extend(self._reason_lines(self.skipped))
        else:
            lines.append("  skipped by reason: none")
        if self.fixed:
            lines.append("  repaired or normalised (in every mode):")
            lines.extend(self._reason_lines(self.fixed))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _reason_lines(self, counts: Counter[str]) -> list[str]:
        out = []
        for reason, n in sorted(counts.items()):
            out.append(f"    {reason}: {n}")
            out.extend(f"      e.g. {t}" for t in self.examples.get(reason, []))
        return out

    # -- persistence (beside the Arrow cache) ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "splits": {k: vars(v) for k, v in self.splits.items()},
            "skipped": dict(self.skipped),
            "fixed": dict(self.fixed),
            "examples": self.examples,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(
            source=d.get("source", ""),
            splits={k: SplitStats(**v) for k, v in d.get("splits", {}).items()},
            skipped=Counter(d.get("skipped", {})),
            fixed=Counter(d.get("fixed", {})),
            examples={k: list(v) for k, v in d.get("examples", {}).items()},
            notes=list(d.get("notes", [])),
        )


class ErrorPolicy:
    """Raise or count a :class:`ConversionError`, depending on ``on_error``."""

    def __init__(self, on_error: str, report: Report) -> None:
        check_on_error(on_error)
        self.on_error = on_error
        self.report = report

    def fail(self, error: ConversionError) -> None:
        """Raise ``error`` (``on_error="raise"`` or unskippable) or count it as a skip."""
        if self.on_error == "raise" or not error.skippable:
            raise error
        self.report.skip(error)


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
