"""What decides the numbers besides the model and the data: :class:`EvalSettings`.

A fine-tune is scored with the seed, images and (image, phrase) pairs its trainer scored:
every setting left open (``None``) is read by :func:`resolve_settings` from the training
config saved with the evaluated model (:data:`RUN_KEYS` says which key), else it takes the
recipes' default. The settings are written into the report, so a number can be reproduced.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sam_hf.config import Sam3Config
from sam_hf.data.views import SAM3_PAIR_KEYS
from sam_hf.eval.sources import FAMILIES, EvaluationError

#: SAM2 prompt protocols: one centre point, several points, the exact box.
SAM2_PROMPTS = ("point", "points", "box")
#: IoU targets of the NoC numbers (NoC@85, NoC@90).
NOC_THRESHOLDS = (0.85, 0.90)


@dataclass
class EvalSettings:
    """Everything that decides the numbers besides the model and the data (saved in the report).

    The fields that may be ``None`` are left open to :func:`resolve_settings`, which reads them
    from the training config saved with the evaluated model (``training_config.yaml`` beside
    ``final/``, see :data:`RUN_KEYS`), else takes the recipes' defaults -- so a fine-tune is
    scored on the very (image, phrase) pairs its trainer scored, and point/box models on
    prompts from the same seed (drawn in original pixels, so SAM2 and the SAM3 tracker get
    the same ones whatever their input sizes).
    """

    seed: int | None = None
    max_images: int | None = None
    batch_size: int = 4
    num_workers: int = 0
    sam2_prompts: tuple[str, ...] = SAM2_PROMPTS
    num_points: int = 3
    max_clicks: int = 10
    noc_thresholds: tuple[float, ...] = NOC_THRESHOLDS
    score_threshold: float | None = None  # None: the run's, else 0.5 (resolve_settings)
    #: SAM3 pairs (:func:`sam_hf.data.views.sam3_eval_pairs`): negatives per positive phrase,
    #: attribute-swapped negatives, and the training images vocabulary negatives come from
    negative_ratio: float | None = None
    hard_negatives: bool | None = None
    train_split: str | None = None
    max_train_samples: int | None = None
    device: str = "cpu"
    #: image resamples of the equal-prompt gap's bootstrap interval (seeded by ``seed``)
    bootstrap_resamples: int = 2000

    def prompt_name(self, prompt: str) -> str:
        return f"points{self.num_points}" if prompt == "points" else prompt

    def prompt_label(self, prompt: str) -> str:
        """How a protocol reads in a table: what the model was given."""
        if prompt == "point":
            return "1 centre point per instance (from GT)"
        if prompt.startswith("points"):
            return f"{self.num_points} points per instance (from GT)"
        if prompt == "box":
            return "exact GT box per instance"
        if prompt == "clicks":
            return f"up to {self.max_clicks} corrective clicks per instance"
        return "text only (noun phrases + negatives)"


#: EvalSettings fields that :func:`resolve_settings` reads from a fine-tune's training config:
#: field -> (training config key, families it applies to, command-line flag).
RUN_KEYS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "seed": ("seed", FAMILIES, "--seed"),
    "max_images": ("max_eval_samples", FAMILIES, "--max-images"),
    "negative_ratio": ("negative_ratio", ("sam3",), "--negative-ratio"),
    "hard_negatives": ("hard_negatives", ("sam3",), "--hard-negatives / --no-hard-negatives"),
    "train_split": ("train_split", ("sam3",), ""),
    "max_train_samples": ("max_train_samples", ("sam3",), ""),
    "score_threshold": ("score_threshold", ("sam3",), "--score-threshold"),
}


def _recipe_default(key: str) -> Any:

    return {f.name: f.default for f in dataclasses.fields(Sam3Config)}[key]


def resolve_settings(
    settings: EvalSettings, runs: Sequence[tuple[str, str, dict]] = ()
) -> tuple[EvalSettings, list[str]]:
    """``settings`` with every open (``None``) field filled, and notes saying where from.

    ``runs`` are ``(label, family, training config)`` of the evaluated fine-tunes (not the
    baselines): an open field takes the value of the config key :data:`RUN_KEYS` names, from
    the runs of the families it applies to (the seed of SAM2's prompts and SAM3's pairs, the
    trainer's ``max_eval_samples`` images, SAM3's ``negative_ratio``, ``hard_negatives`` and
    the training images its vocabulary negatives come from), else the recipes' default
    (``Sam3Config``'s; ``max_images`` 0: all). The trainer's evaluation and this one then
    score the same pairs and prompts. Runs that disagree on a shared field (two seeds) stop
    with a message naming the flag that settles it.
    """

    assert set(SAM3_PAIR_KEYS) <= set(RUN_KEYS), "every SAM3 pair key must be resolvable"
    values: dict[str, Any] = {}
    taken: dict[str, list[str]] = defaultdict(list)
    for name, (key, families, flag) in RUN_KEYS.items():
        if getattr(settings, name) is not None:
            continue
        found = {
            label: cfg[key]
            for label, family, cfg in runs
            if family in families and cfg.get(key) is not None
        }
        if len(set(found.values())) > 1:
            raise EvaluationError(
                f"the evaluated models were trained with different {key} ({found}); pass "
                f"{flag} to choose one for all of them."
            )
        if found:
            values[name] = next(iter(found.values()))
            for label in found:
                taken[label].append(f"{key} {values[name]}")
        else:
            values[name] = 0 if name == "max_images" else _recipe_default(key)
    types = {"seed": int, "max_images": int, "negative_ratio": float, "hard_negatives": bool}
    types.update(train_split=str, max_train_samples=int, score_threshold=float)
    resolved = dataclasses.replace(settings, **{k: types[k](v) for k, v in values.items()})
    notes = [
        f"{label}: {', '.join(items)} read from the training config saved with it (the "
        "values its trainer evaluated with; the command-line options override them)."
        for label, items in taken.items()
    ]
    return resolved, notes
