"""The SAM3 protocol: text only, every phrase of each image plus known-absent negatives.

The (image, phrase) pairs are those of :func:`sam_hf.data.views.sam3_eval_pairs`, the function
the trainer's evaluation builds its pairs with. Seed, ``negative_ratio``, ``hard_negatives``
and the training images the vocabulary negatives come from are read from the training config
saved with the fine-tuned model (:func:`sam_hf.eval.settings.resolve_settings`; the recipes'
defaults without one), so ``evaluate.py sam3`` on a run's ``final/`` scores the pairs of the
run's final evaluation. Scored with :meth:`sam_hf.tasks.sam3.Sam3Task.compute_metrics` (cgF1,
pmF1, IL_MCC, concept recall, grounding and attribute accuracy, COCO mask AP,
Hungarian-matched instance IoU). The metric contract keeps predictions scoring >= 0.5; a
different ``score_threshold`` is applied by remapping scores monotonically so that the
threshold lands on 0.5 (:func:`sam_hf.metrics.matching.remap_scores`): rank-based numbers
(mask AP) do not change, and every thresholded number then means "score >= score_threshold".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from sam_hf.data.views import sam3_eval_pairs
from sam_hf.eval.compare import ModelEvaluation
from sam_hf.eval.data import sample_loader, to_device
from sam_hf.eval.settings import EvalSettings, resolve_settings
from sam_hf.eval.sources import LoadedModel
from sam_hf.metrics.concepts import concept_recall
from sam_hf.metrics.matching import matched_instance_ious, remap_scores
from sam_hf.metrics.records import sam3_pairs
from sam_hf.tasks.sam3 import Sam3Task


def evaluate_sam3(
    loaded: LoadedModel,
    ds: datasets.Dataset,
    vocab_ds: datasets.Dataset,
    settings: EvalSettings,
    label: str = "sam3",
    role: str = "model",
    progress: bool = True,
) -> ModelEvaluation:
    """The SAM3 protocol on ``ds``: the (image, phrase) pairs of
    :func:`sam_hf.data.views.sam3_eval_pairs` -- the function the trainer's evaluation builds its
    pairs with -- under ``settings``' seed, negative ratio and hard negatives, with negatives
    drawn from ``vocab_ds`` (the training images); all SAM3 metrics."""
    settings, _ = resolve_settings(settings)
    task = Sam3Task()
    module = loaded.module
    device = next(module.parameters()).device
    pair_cfg = dataclasses.replace(
        loaded.config,
        seed=settings.seed,
        negative_ratio=settings.negative_ratio,
        hard_negatives=settings.hard_negatives,
    )
    eval_ds, collator = sam3_eval_pairs(pair_cfg, loaded.processor, ds, vocab_ds)
    result = ModelEvaluation(label, role, loaded.source, loaded.resolution, loaded.num_parameters)
    records: list[dict] = []
    instance_ious: list[float] = []
    per_image: dict[str, float] = {}
    loader = sample_loader(eval_ds, settings.batch_size, settings.num_workers)
    for samples in tqdm(loader, desc=f"{label} (SAM3 text)", disable=not progress):
        batch = to_device(collator(samples), device)
        preds = module.predict(batch)
        for p in preds:
            image_ious = []
            for pair in p["pairs"]:
                pair["scores"] = remap_scores(pair["scores"], settings.score_threshold)
                image_ious.extend(matched_instance_ious(pair).tolist())
            instance_ious.extend(image_ious)
            if image_ious:
                per_image[p["image_id"]] = float(np.mean(image_ious))
        for s, rec in zip(samples, task.eval_records(preds)):
            rec["index"] = int(s["index"])
            records.append(rec)
    metrics = task.compute_metrics(records)
    result.metrics["text"] = metrics
    result.records["text"] = records
    result.instance_ious["text"] = instance_ious
    result.per_image_iou["text"] = per_image
    result.common["text"] = sam3_common_metrics(records, metrics)
    return result


def sam3_common_metrics(records: Sequence[dict], metrics: dict[str, Any]) -> dict[str, Any]:
    """SAM3's side of the common columns: matched instance IoU, concept and instance recall.

    Instance recall is :func:`sam_hf.metrics.concepts.concept_recall` with every pair put under one
    phrase, i.e. matched instances over all instances.
    """
    pairs = sam3_pairs(records)
    n = sum(int(p["gt"].shape[0]) for p in pairs)
    pooled = concept_recall([{**p, "phrase": "all"} for p in pairs]) if n else float("nan")
    return {
        "mean_instance_iou": float(metrics.get("mean_iou", float("nan"))) if n else float("nan"),
        "concept_recall": float(metrics.get("concept_recall", float("nan"))),
        "instance_recall": float(pooled),
        "num_instances": n,
    }
