"""Running a whole evaluation: every model in turn on the same images of one split.

How far is SAM2's prompt expertise from SAM3's concept understanding on *your* data, before
and after fine-tuning, and how much of it is SAM3's backbone (the SAM3 tracker, prompted like
SAM2)? :func:`run_evaluation` answers it for the models a command line names
(:class:`ModelSpec`): each is scored with its family's protocol (:mod:`sam_hf.eval.sam2` for
the point/box families of :data:`~sam_hf.config.validate.GEOMETRIC_FAMILIES`, :mod:`sam_hf.eval.sam3`) under settings resolved from the fine-tunes' training configs
(:mod:`sam_hf.eval.settings`), and the results are gathered into an
:class:`~sam_hf.eval.compare.Evaluation` that :mod:`sam_hf.eval.report` writes down.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from sam_hf.config.validate import GEOMETRIC_FAMILIES, family_name
from sam_hf.data.views import sam3_training_split
from sam_hf.eval.compare import Evaluation, ModelEvaluation
from sam_hf.eval.data import load_split, phrase_coverage, sam3_vocab_split, select_images
from sam_hf.eval.sam2 import evaluate_sam2
from sam_hf.eval.sam3 import evaluate_sam3
from sam_hf.eval.settings import EvalSettings, resolve_settings
from sam_hf.eval.sources import (
    EvaluationError,
    LoadedModel,
    load_model,
    resolve_source,
)

logger = logging.getLogger("sam_hf")


@dataclass
class ModelSpec:
    """One model to evaluate: a source, its family and its role in the comparison."""

    label: str
    source: str
    family: str
    role: str  # "fine-tuned" | "baseline" | "model"
    resolution: int | None = None


def _describe_data(
    ds: datasets.Dataset, ds_full: datasets.Dataset, data_dir: Any, split: str, families: set
) -> tuple[dict[str, Any], dict[str, int]]:
    """The report's description of the evaluated images, and their phrase coverage."""
    cover = phrase_coverage(ds)
    geometric = sorted(families & set(GEOMETRIC_FAMILIES))
    if geometric and cover["objects"] == 0:
        names = " and ".join(family_name(f) for f in geometric)
        raise EvaluationError(
            f"{data_dir} [{split}] has no instance masks: {names} "
            f"{'is' if len(geometric) == 1 else 'are'} prompted from "
            "ground-truth instances. Use a split with objects (e.g. the synthetic orchard)."
        )
    data = {
        "path": str(data_dir),
        "split": split,
        "num_images": len(ds),
        "num_images_in_split": len(ds_full),
        "num_objects": cover["objects"],
        "image_ids": list(ds["image_id"]),
    }
    return data, cover


def _sam3_vocabulary(
    dd: Any,
    ds_full: datasets.Dataset,
    split: str,
    settings: EvalSettings,
    data: dict[str, Any],
    cover: dict[str, int],
    notes: list[str],
) -> datasets.Dataset:
    """The images SAM3's vocabulary negatives come from; notes where its phrases come from."""
    vocab_split = sam3_vocab_split(dd, split, settings.train_split)
    # the training images, as the trainer reads them (the first max_train_samples)
    # (a dataset without the run's training split falls back to the evaluated split itself)
    vocab_ds = sam3_training_split(dd, settings) if vocab_split == settings.train_split else ds_full
    data["negative_vocabulary_split"] = vocab_split
    data["negative_vocabulary_images"] = len(vocab_ds)
    if cover["category"]:
        notes.append(
            f"{cover['category']} of {cover['objects']} objects have no noun phrase; SAM3 "
            "was queried with their category name instead (and SAM2's per-phrase recall "
            "groups them by category)."
        )
        data["phrase_source"] = "category fallback" if not cover["with_phrase"] else "mixed"
    else:
        data["phrase_source"] = "noun_phrase"
    return vocab_ds


def _closing_notes(ds: datasets.Dataset, settings: EvalSettings, families: set) -> list[str]:
    notes = []
    geometric = [f for f in GEOMETRIC_FAMILIES if f in families]
    if geometric:
        n_empty = sum(1 for objs in ds["objects"] if not [o for o in objs if not o["iscrowd"]])
        if n_empty:
            names = " and ".join(family_name(f) for f in geometric)
            notes.append(
                f"{n_empty} images without objects cannot be prompted ({names} skip them); "
                "SAM3 still answers their negative phrases."
            )
    if settings.score_threshold != 0.5 and "sam3" in families:
        notes.append(
            f"SAM3 score threshold {settings.score_threshold}: scores were remapped "
            "monotonically so that the metrics' 0.5 cut equals it (mask AP is unchanged)."
        )
    return notes


def run_evaluation(
    specs: Sequence[ModelSpec],
    data_dir: str | os.PathLike,
    split: str,
    settings: EvalSettings,
    mode: str = "compare",
    progress: bool = True,
    loader: Callable[..., LoadedModel] = load_model,
) -> Evaluation:
    """Load every model in turn and run its family's protocol on the same images.

    Models are loaded one at a time and released after their protocol, so comparing a
    baseline, a fine-tune and the other family never holds more than one model in memory.
    """
    ds_full, dd = load_split(data_dir, split)
    runs = [
        (s.label, s.family, resolve_source(s.source, s.family, 0, s.resolution).run_config)
        for s in specs
        if s.role != "baseline"
    ]
    settings, notes = resolve_settings(settings, runs)
    ds = select_images(ds_full, settings.max_images)
    families = {s.family for s in specs}
    data, cover = _describe_data(ds, ds_full, data_dir, split, families)
    if "sam3" in families:
        vocab_ds = _sam3_vocabulary(dd, ds_full, split, settings, data, cover, notes)
    results: list[ModelEvaluation] = []
    for spec in specs:
        src = resolve_source(spec.source, spec.family, settings.seed, spec.resolution)
        loaded = loader(src, device=settings.device)
        logger.info("Evaluating %s: %s at %d px", spec.label, src.describe(), loaded.resolution)
        if spec.family in GEOMETRIC_FAMILIES:
            res = evaluate_sam2(loaded, ds, settings, spec.label, spec.role, progress)
        else:
            res = evaluate_sam3(loaded, ds, vocab_ds, settings, spec.label, spec.role, progress)
        results.append(res)
        del loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    notes += _closing_notes(ds, settings, families)
    index = {iid: i for i, iid in enumerate(data["image_ids"])}
    return Evaluation(mode, data, settings, results, notes, index)
