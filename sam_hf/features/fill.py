"""Filling the cache for a run: the features its datasets and phrases need, computed once.

Before training, the main process computes every missing feature on the accelerator's device
under the run's mixed precision while the other ranks wait (``main_process_first``); they then
find the cache complete and only read it. The frozen encoder is moved to the device for the
fill only and put back where it was. What the features are keyed by is in
:mod:`~sam_hf.features.keys`, how they are stored in :mod:`~sam_hf.features.store`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import PartialState

from sam_hf.data.queries import PhraseVocab, candidate_phrases
from sam_hf.data.tokenizer import PhraseTokenizer
from sam_hf.data.transforms import SegmentationDataset
from sam_hf.features import keys
from sam_hf.features.cache import autocast_dtype
from sam_hf.features.dataset import CachedEmbeddingDataset
from sam_hf.features.store import EmbeddingCache, PhraseFeatureCache, PhraseFeatures
from sam_hf.models.freezing import image_cache_parts

logger = logging.getLogger("sam_hf")


@contextlib.contextmanager
def moved_to(device: torch.device, parts: list[Any]) -> Iterator[None]:
    """Temporarily move modules / parameters (e.g. a frozen encoder) to ``device``."""
    homes = [
        p.device if isinstance(p, torch.Tensor) else next(p.parameters()).device for p in parts
    ]

    def move(where: list[torch.device]) -> None:
        for part, dev in zip(parts, where):
            if isinstance(part, torch.Tensor):
                part.data = part.data.to(dev)
            else:
                part.to(dev)

    move([device] * len(parts))
    try:
        yield
    finally:
        move(homes)


def _image_store(
    ds: SegmentationDataset, cfg: Any, processor: Any, family: str, weights: str
) -> EmbeddingCache:
    """The cache folder of ``ds``'s features under this run's model, data and precision."""
    ip = processor.image_processor
    key = keys.cache_key(
        family=family,
        model_id=keys.resolved_model_id(cfg.model_name_or_path),
        revision=cfg.revision,
        resolution=cfg.resolution,
        weights=weights,
        fingerprint=ds.ds._fingerprint,
        image_mean=ip.image_mean,
        image_std=ip.image_std,
        autocast=autocast_dtype(cfg),
    )
    return EmbeddingCache(Path(cfg.dataset_path) / keys.CACHE_DIRNAME, key)


def cached_image_dataset(
    ds: SegmentationDataset, cfg: Any, processor: Any, family: str, module: torch.nn.Module
) -> CachedEmbeddingDataset:
    """``ds`` with its frozen-encoder features attached, computing the missing ones first.

    ``module`` is the training module (``Sam2ForTraining`` / ``Sam3ForTraining``): its
    ``encoder_features`` computes the features, from the unaugmented pixels and their mirror
    image, one image at a time; the encoder parts (:func:`image_cache_parts`) move to the
    device for the fill.
    """
    parts = image_cache_parts(module.model)
    store = _image_store(ds, cfg, processor, family, keys.weights_hash(parts[0], parts[1:]))
    variants = keys.flip_variants(ds.hflip_prob)
    plain = SegmentationDataset.with_processor(
        ds.ds, processor, ds.resolution, ds.seed, train=False
    )
    state = PartialState()
    with state.main_process_first():
        if store.is_complete():
            logger.info("Embedding cache: reusing %s.", store.dir)
        else:
            logger.info(
                "Filling the embedding cache %s (%d images x %d flip variants).",
                store.dir,
                len(ds),
                len(variants),
            )
            with moved_to(state.device, parts):
                n = store.fill(
                    lambda i: plain[i]["pixel_values"],
                    len(ds),
                    variants,
                    module.encoder_features,
                    device=state.device,
                    autocast=autocast_dtype(cfg),
                )
            logger.info("Embedding cache: %d feature files written to %s.", n, store.dir)
    return CachedEmbeddingDataset(ds, store)


def _phrase_store(cfg: Any, processor: Any, model: Any, context_length: int) -> PhraseFeatureCache:
    """The phrase cache folder of this text encoder, tokenizer and precision."""
    key = keys.text_cache_key(
        model_id=keys.resolved_model_id(cfg.model_name_or_path),
        revision=cfg.revision,
        weights=keys.weights_hash(model.text_encoder, list(model.text_projection.parameters())),
        tokenizer=f"{type(processor.tokenizer).__name__}:{len(processor.tokenizer)}",
        context_length=context_length,
        autocast=autocast_dtype(cfg),
    )
    return PhraseFeatureCache(Path(cfg.dataset_path) / keys.CACHE_DIRNAME, key)


def cached_phrase_features(
    cfg: Any,
    processor: Any,
    model: Any,
    splits: list[datasets.Dataset],
    vocab: PhraseVocab,
) -> PhraseFeatures:
    """The frozen text encoder's features of every phrase the queries can draw from these
    splits (:func:`~sam_hf.data.queries.candidate_phrases` with ``vocab``), from the phrase
    cache beside the data; the main process encodes what is missing while the others wait.
    ``model`` is the (possibly peft-wrapped) ``Sam3Model``."""
    tokenizer = PhraseTokenizer(processor.tokenizer)
    store = _phrase_store(cfg, processor, model, tokenizer.context_length)
    phrases: set[str] = set()  # every phrase the queries can draw (never empty ones)
    for split in splits:
        rows = split.select_columns(["objects", "negative_phrases"])
        phrases |= candidate_phrases(rows, vocab, cfg.hard_negatives)
    state = PartialState()
    with state.main_process_first():
        table = store.load()
        todo = sorted(phrases - set(table))
        if todo:  # the text encoder moves to the device only when it has work
            with moved_to(state.device, [model.text_encoder, model.text_projection]):
                table = store.add(
                    table,
                    todo,
                    tokenizer,
                    lambda ids, mask: (
                        model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
                    ),
                    device=state.device,
                    autocast=autocast_dtype(cfg),
                )
    logger.info(
        "Phrase feature cache %s: %d phrases (%d encoded now).", store.dir, len(table), len(todo)
    )
    return PhraseFeatures(table)
