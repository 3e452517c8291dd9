"""What a run reads of a prepared split: the training and evaluation views, and SAM3's pairs.

The trainer and ``scripts/evaluate.py`` must see the same samples under the same seeds, or
their numbers would disagree for reasons no one could find. Each view is defined once here:
:func:`train_view` (augmented, seeded per sample and epoch), :func:`eval_view` (no
augmentation, masks kept at the original resolution) and, for SAM3, :func:`sam3_eval_pairs`,
the (image, phrase) pairs both score.
"""

from __future__ import annotations

from typing import Any

import datasets

from sam_hf.config import ConfigError
from sam_hf.data.queries import PhraseVocab, Sam3Collator
from sam_hf.data.transforms import SegmentationDataset

#: The config keys that decide SAM3's evaluation (image, phrase) pairs, besides the evaluated
#: split: per-sample seeds, how many negatives and which kinds, and the training images the
#: vocabulary negatives come from. ``scripts/evaluate.py sam3`` reads them from the training
#: config saved with the model, so it scores the pairs the trainer scored.
SAM3_PAIR_KEYS = ("seed", "negative_ratio", "hard_negatives", "train_split", "max_train_samples")


def subset(ds: datasets.Dataset, n: int) -> datasets.Dataset:
    """The first ``n`` rows of ``ds`` (all of them when ``n`` is 0)."""
    return ds.select(range(min(n, len(ds)))) if n > 0 else ds


def train_view(cfg: Any, processor: Any, split: datasets.Dataset) -> SegmentationDataset:
    """The augmented training view of a split (flips / jitter seeded per sample and epoch)."""
    return SegmentationDataset.with_processor(
        split,
        processor,
        cfg.resolution,
        cfg.seed,
        train=True,
        hflip_prob=cfg.hflip_prob,
        color_jitter=cfg.color_jitter,
    )


def eval_view(cfg: Any, processor: Any, split: datasets.Dataset) -> SegmentationDataset:
    """The evaluation view of a split: no augmentation, original masks kept (scored at full
    resolution), per-sample seeds from ``cfg.seed``, images at ``cfg.resolution``."""
    return SegmentationDataset.with_processor(
        split, processor, cfg.resolution, cfg.seed, train=False, keep_orig_masks=True
    )


def check_noun_phrases(ds: datasets.Dataset, split: str, fallback: bool) -> None:
    """SAM3 learns from phrases: an object without one is an error unless the category may
    stand in (``noun_phrase_from_category``)."""
    if fallback:
        return
    for row in ds.select_columns(["image_id", "objects"]):
        for k, obj in enumerate(row["objects"]):
            if not obj["noun_phrase"].strip():
                raise ConfigError(
                    f"{split} image {row['image_id']!r}, object {k} (category "
                    f"{obj['category']!r}) has no noun_phrase. Annotate one, or set "
                    "noun_phrase_from_category: true to use category names."
                )


def sam3_training_split(dd: datasets.DatasetDict, cfg: Any) -> datasets.Dataset:
    """The images SAM3 trains on, which are also where its vocabulary negatives come from:
    the first ``cfg.max_train_samples`` images of ``cfg.train_split`` (all when 0)."""
    return subset(dd[cfg.train_split], cfg.max_train_samples)


def sam3_eval_pairs(
    cfg: Any, processor: Any, eval_split: datasets.Dataset, vocab_split: datasets.Dataset
) -> tuple[SegmentationDataset, Sam3Collator]:
    """SAM3's evaluation (image, phrase) pairs: the one definition that the trainer's
    evaluation (:class:`sam_hf.tasks.sam3.Sam3Task`) and ``scripts/evaluate.py sam3``
    (:func:`sam_hf.eval.sam3.evaluate_sam3`) both call, so on the same model, data and
    config they score the same pairs.

    Returns the evaluation view of ``eval_split`` (:func:`eval_view`: no augmentation,
    per-sample seeds from ``cfg.seed``) and the evaluation collator that turns its samples into
    pairs (:func:`sam_hf.data.queries.sample_queries` with ``train=False``): per image every
    positive phrase, every annotated negative, and ``max(1, ceil(cfg.negative_ratio x
    positives))`` negatives drawn, seeded per sample, from the phrases of ``vocab_split`` (the
    training split, :func:`sam3_training_split`) and, with ``cfg.hard_negatives``, from
    attribute swaps. ``max_phrases_per_image`` limits training queries only.
    """
    collator = Sam3Collator(
        cfg, PhraseVocab.from_dataset(vocab_split), processor.tokenizer, train=False
    )
    return eval_view(cfg, processor, eval_split), collator
