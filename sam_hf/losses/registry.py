"""Pluggable loss terms: one function registered by name, weighted from the YAML.

The guide's "custom loss functions" are meant to be a one-function affair: a researcher writes
``@SAM2_LOSS_TERMS.register("boundary")`` above a function and sets
``extra_loss_weights: {boundary: 2.0}`` in the recipe, without touching the model wrapper or the
trainer. A registry is family-specific because what a term receives differs (SAM2 terms see one
prediction step of prompted masks, SAM3 terms see matched queries); the mechanics -- names,
validation of the YAML weights, the weighted sum -- are shared and live here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., torch.Tensor])


class LossRegistry:
    """Name -> loss-term function for one model family.

    A term is a plain function that takes the family's loss-input object and returns a scalar
    tensor (already normalised the way the family's built-in terms are). ``builtin`` names are
    the terms whose weights come from dedicated config keys (``loss_focal`` ...); every other
    registered term is weighted through ``extra_loss_weights``.
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._terms: dict[str, Callable[..., torch.Tensor]] = {}
        self._builtin: set[str] = set()

    def register(
        self, name: str, *, builtin: bool = False, overwrite: bool = False
    ) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``.

        Re-registering a name raises unless ``overwrite=True``: two modules silently fighting
        over one name would make a run's loss depend on import order.
        """
        if not name or not name.isidentifier():
            raise ValueError(f"loss term name must be a Python identifier, got {name!r}.")

        def deco(fn: F) -> F:
            if name in self._terms and not overwrite:
                raise ValueError(
                    f"a {self.family} loss term named {name!r} is already registered "
                    f"({self._terms[name].__module__}.{self._terms[name].__qualname__}); "
                    "pick another name or pass overwrite=True."
                )
            self._terms[name] = fn
            if builtin:
                self._builtin.add(name)
            return fn

        return deco

    def unregister(self, name: str) -> None:
        """Remove a custom term (tests and notebooks that register throwaway terms)."""
        if name in self._builtin:
            raise ValueError(
                f"{name!r} is a built-in {self.family} loss term; it cannot be removed."
            )
        self._terms.pop(name, None)

    def get(self, name: str) -> Callable[..., torch.Tensor]:
        if name not in self._terms:
            raise KeyError(
                f"no {self.family} loss term named {name!r}; registered: {self.names()}."
            )
        return self._terms[name]

    def __contains__(self, name: object) -> bool:
        return name in self._terms

    def names(self) -> list[str]:
        return sorted(self._terms)

    def builtin_names(self) -> list[str]:
        return sorted(self._builtin)

    def resolve_weights(
        self, builtin_weights: Mapping[str, float], extra_weights: Mapping[str, float] | None
    ) -> dict[str, float]:
        """Merge the dedicated-key weights with ``extra_loss_weights``, checking every name.

        Raises a ``ValueError`` that names the offending key and lists what is allowed, so a
        typo in the YAML fails before training instead of silently dropping a term.
        """
        weights: dict[str, float] = {}
        for name, w in builtin_weights.items():
            if name not in self._builtin:
                raise ValueError(f"{name!r} is not a built-in {self.family} loss term.")
            weights[name] = float(w)
        for name, w in (extra_weights or {}).items():
            if name in self._builtin:
                raise ValueError(
                    f"extra_loss_weights: {name!r} is a built-in {self.family} term; set its "
                    f"weight with loss_{name} instead."
                )
            if name not in self._terms:
                custom = sorted(set(self._terms) - self._builtin)
                raise ValueError(
                    f"extra_loss_weights: no {self.family} loss term named {name!r}. Registered "
                    f"custom terms: {custom or 'none'}; register one with "
                    f"@{self.family.upper()}_LOSS_TERMS.register({name!r}) before building the model."
                )
            w = float(w)
            if not w >= 0.0:
                raise ValueError(f"extra_loss_weights: weight of {name!r} must be >= 0, got {w}.")
            weights[name] = w
        return weights

    def compute(
        self, names: Iterable[str], inputs: Any, skip: Iterable[str] = ()
    ) -> dict[str, torch.Tensor]:
        """Evaluate the named terms on ``inputs`` (terms in ``skip`` are left out)."""
        skip = set(skip)
        return {n: self.get(n)(inputs) for n in names if n not in skip}


def weighted_sum(values: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``sum(weights[k] * values[k])`` over the terms with a non-zero weight.

    Zero-weight terms are left out rather than multiplied by 0 so that a NaN in a disabled term
    cannot poison the total.
    """
    total: torch.Tensor | None = None
    for name, w in weights.items():
        if w == 0.0 or name not in values:
            continue
        v = values[name] * w
        total = v if total is None else total + v
    if total is None:
        ref = next(iter(values.values()), None)
        return torch.zeros((), device=ref.device if ref is not None else None)
    return total
