"""What every official-checkpoint conversion shares: reading and writing a ``.pt``, key rules
that work in both directions, and one error that lists every key that does not fit.

An official SAM2 / SAM3 checkpoint is a ``torch.save`` of ``{"model": state_dict}`` (some
files hold the bare state dict). It is read with ``torch.load(weights_only=True)``: a
checkpoint is data, never code to run. A conversion is a list of :class:`Rule` s, each a pair
of key templates (official, transformers) in which ``{}`` stands for a run of digits (a layer
index) carried over unchanged; every key must match exactly one rule, and every key the
target model expects must be produced, or :class:`KeyMapError` lists the unknown, missing and
unused keys. A partial load is never silent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sam_hf.config import ConfigError

#: How many keys of each kind an error message names before it says "... and N more".
_LISTED = 12


class ConversionError(ConfigError):
    """A checkpoint cannot be converted; the message says which file, key or size and why."""


class KeyMapError(ConversionError):
    """Keys that do not fit a conversion: unknown (no rule), missing (the target expects them,
    nothing gave them) or unused (given but the target has no place for them)."""

    def __init__(
        self,
        what: str,
        *,
        unknown: Iterable[str] = (),
        missing: Iterable[str] = (),
        unused: Iterable[str] = (),
        hint: str = "",
    ) -> None:
        self.unknown = sorted(unknown)
        self.missing = sorted(missing)
        self.unused = sorted(unused)
        parts = [f"{what}: the keys do not fit"]
        for name, keys in (
            ("unknown", self.unknown),
            ("missing", self.missing),
            ("unused", self.unused),
        ):
            if keys:
                parts.append(f"{len(keys)} {name} ({_listing(keys)})")
        message = "; ".join(parts) + "."
        super().__init__(message + (f" {hint}" if hint else ""))


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED])
    return shown + (f", ... and {len(keys) - _LISTED} more" if len(keys) > _LISTED else "")


def check_keys(
    what: str,
    given: Iterable[str],
    expected: Iterable[str],
    *,
    unknown: Iterable[str] = (),
    hint: str = "",
) -> None:
    """Raise :class:`KeyMapError` unless ``given`` is exactly ``expected`` and ``unknown`` is
    empty (keys no rule matched). ``missing`` = expected - given, ``unused`` = given - expected.
    """
    given, expected, unknown = set(given), set(expected), set(unknown)
    missing, unused = expected - given, given - expected
    if missing or unused or unknown:
        raise KeyMapError(what, unknown=unknown, missing=missing, unused=unused, hint=hint)


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of an official ``.pt`` (or a bare state dict), on the CPU.

    Loaded with ``weights_only=True``; a file that is not a checkpoint, or holds no tensors,
    is a :class:`ConversionError` naming the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure becomes one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(
            f"{path}: could not be read as a checkpoint with torch.load(weights_only=True) "
            f"({first})."
        ) from e
    state = raw.get("model", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise ConversionError(
            f"{path}: expected an official checkpoint, a dict {{'model': state_dict}} (or a "
            f"state dict), found {type(raw).__name__}."
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: its state dict holds non-tensor entries ({_listing(bad)}).")
    return dict(state)


def save_official(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``{"model": state}`` as the official code saves (and ``build_sam2`` reads) it."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in state.items()}}, path)
    return path


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + r"(\d+)".join(re.escape(p) for p in template.split("{}")) + "$")


@dataclass(frozen=True)
class Rule:
    """One key correspondence: ``official`` <-> ``hf`` templates, ``{}`` = a layer index.

    Both templates must hold the same number of ``{}``; indices are carried over in order.
    """

    official: str
    hf: str
    _patterns: dict[str, re.Pattern[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.official.count("{}") != self.hf.count("{}"):
            raise ValueError(f"rule {self.official!r} <-> {self.hf!r}: placeholder counts differ")
        patterns = {"official": _pattern(self.official), "hf": _pattern(self.hf)}
        object.__setattr__(self, "_patterns", patterns)

    def apply(self, key: str, source: str) -> str | None:
        """``key`` (in ``source`` naming: "official" or "hf") in the other naming, or None."""
        m = self._patterns[source].match(key)
        if m is None:
            return None
        target = self.hf if source == "official" else self.official
        pieces = target.split("{}")
        out = pieces[0]
        for index, piece in zip(m.groups(), pieces[1:], strict=True):
            out += index + piece
        return out


def weight_bias(pairs: list[tuple[str, str]], params: tuple[str, ...] = ("weight", "bias")):
    """One :class:`Rule` per (official, hf) module pair and parameter name."""
    return [Rule(f"{o}.{p}", f"{h}.{p}") for o, h in pairs for p in params]


def rename(
    state: Mapping[str, torch.Tensor], rules: Iterable[Rule], source: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with every key renamed by the first rule that matches it (``source`` is the
    naming the keys are in: "official" or "hf"), and the keys no rule matched.

    Tensors are passed through unchanged (the same objects). Two keys that would land on the
    same name raise :class:`ConversionError` (a rule set that is not one-to-one).
    """
    if source not in ("official", "hf"):
        raise ValueError(f"source must be 'official' or 'hf', not {source!r}")
    rules = list(rules)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unmatched = []
    for key, value in state.items():
        new = next((n for r in rules if (n := r.apply(key, source)) is not None), None)
        if new is None:
            unmatched.append(key)
            continue
        if new in out:
            raise ConversionError(f"keys {origin[new]!r} and {key!r} both map to {new!r}.")
        out[new], origin[new] = value, key
    return out, unmatched
