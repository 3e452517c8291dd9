"""The SAM2 protocol: prompts taken from the ground truth, and clicks-to-IoU.

Prompts are drawn per object from its mask at the image's *original* resolution, seeded by the
sample seed and the object's index (the streams of :class:`~sam_hf.data.collate.Sam2Collator`),
then mapped into each model's input frame (:func:`to_model_coords`):

* ``point``: one click at the object's centre (the mask pixel farthest from its border);
* ``points3``: that click plus 2 more drawn uniformly from the mask (``--num-points``);
* ``box``: the exact tight box.

Drawing them in the original frame is what makes the SAM2 vs SAM3 tracker comparison an
equal-prompt one: a 1024 px SAM2 and a 1008 px tracker get the very same clicks and boxes in
image coordinates (drawn on each model's resized mask they would differ by a pixel or more).
Every record stores its prompts (``prompt_points`` / ``prompt_labels``, original pixels), so
:mod:`sam_hf.eval.bootstrap` can check they are equal before subtracting two models' numbers.

Each is its own row of per-instance metrics (:meth:`sam_hf.tasks.sam2.Sam2Task.compute_metrics`:
``mean_iou``, ``mean_dice``, ``mean_boundary_f1``, ``iou_at_50``), the same numbers the trainer
logs for its own prompt type.

**Clicks-to-IoU and NoC** (interactive segmentation, the RITM/SAM protocol): starting from an
empty prediction, each click is placed by :func:`sam_hf.data.prompts.sample_correction_clicks`
with ``method="center"`` at the deepest pixel of the larger error region of the current
prediction (positive in a false negative, negative in a false positive), at the image's
original resolution, where the IoU is measured. The model gets all clicks so far plus its
previous low-resolution logits as mask prompt. ``NoC@85`` / ``NoC@90`` is the number of clicks
an object needs to reach IoU 0.85 / 0.90, counted as ``max_clicks`` when it never does (the
standard definition); ``NoF`` counts those failures. ``mIoU@k`` is the mean IoU after ``k``
clicks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sam_hf.config.validate import family_name
from sam_hf.data import rle
from sam_hf.data.collate import Sam2Collator
from sam_hf.data.prompts import make_generator, sample_correction_clicks, sample_object_prompt
from sam_hf.data.queries import normalize_phrase
from sam_hf.data.transforms import SegmentationDataset
from sam_hf.eval.compare import ModelEvaluation
from sam_hf.eval.data import sample_loader, to_device
from sam_hf.eval.settings import SAM2_PROMPTS, EvalSettings, resolve_settings
from sam_hf.eval.sources import EvaluationError, LoadedModel
from sam_hf.metrics.masks import mask_iou
from sam_hf.tasks.sam2 import Sam2Task

#: Objects decoded at once in the clicks protocol (bounds memory on 100+ object images).
CLICK_CHUNK = 32


def _collator_cfg(prompt: str, num_points: int) -> SimpleNamespace:
    return SimpleNamespace(
        prompt_type="box" if prompt == "box" else "point",
        num_points=num_points if prompt == "points" else 1,
        box_noise=0.0,
        box_noise_max_px=0.0,
        mask_prompt_prob=0.0,
        max_objects_per_image=1 << 30,
    )


def _crop_bounds(region: torch.Tensor) -> tuple[int, int, int, int]:
    """Rows/cols [y0, y1) x [x0, x1) of a region's bounding box grown by one pixel (clipped)."""
    h, w = region.shape
    ys = region.any(1).nonzero().flatten()
    xs = region.any(0).nonzero().flatten()
    return (
        max(int(ys[0]) - 1, 0),
        min(int(ys[-1]) + 2, h),
        max(int(xs[0]) - 1, 0),
        min(int(xs[-1]) + 2, w),
    )


def correction_click(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float, int]:
    """The evaluation ("center") correction click of one object: ``(x, y, label)``.

    Same rule as :func:`sam_hf.data.prompts.sample_correction_clicks` with ``method="center"``,
    computed on the error region's bounding box grown by one pixel: every pixel of that ring is
    outside both error regions (or is the image border, which counts as outside anyway), so the
    distance of each error pixel to the nearest non-error pixel -- and the row-major tie break --
    are exactly those of the full image, at a fraction of the cost on large frames.
    """
    pred, gt = pred.bool(), gt.bool()
    err = pred ^ gt
    gen = [make_generator(0, "eval-click")]  # "center" draws nothing; the API wants one
    if not bool(err.any()):
        pts, labels = sample_correction_clicks(pred[None], gt[None], gen, "center")
        return float(pts[0, 0]), float(pts[0, 1]), int(labels[0])
    y0, y1, x0, x1 = _crop_bounds(err)
    pts, labels = sample_correction_clicks(
        pred[None, y0:y1, x0:x1], gt[None, y0:y1, x0:x1], gen, "center"
    )
    return float(pts[0, 0]) + x0, float(pts[0, 1]) + y0, int(labels[0])


def to_model_coords(xy: torch.Tensor, orig_size: tuple[int, int], resolution: int) -> torch.Tensor:
    """Pixel indices ``(x, y)`` of the original image -> pixel indices of the R x R input.

    The image was squash-resized, so the centre of pixel ``x`` (``x + 0.5``) maps to
    ``(x + 0.5) * R / W`` and back to an index by ``- 0.5`` (the prompt encoder adds 0.5).
    """
    h, w = orig_size
    scale = torch.tensor([resolution / w, resolution / h], dtype=torch.float32)
    return (xy.float() + 0.5) * scale - 0.5


def from_model_coords(
    xy: torch.Tensor, orig_size: tuple[int, int], resolution: int
) -> torch.Tensor:
    """Inverse of :func:`to_model_coords`."""
    h, w = orig_size
    scale = torch.tensor([w / resolution, h / resolution], dtype=torch.float32)
    return (xy.float() + 0.5) * scale - 0.5


def original_prompts(
    sample: dict[str, Any], prompt: str, num_points: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(points (n, 2), labels (n,))]`` per object of ``sample``, in original-image pixels.

    The evaluation prompts of :class:`~sam_hf.data.collate.Sam2Collator` (centre point, seeded
    extra points, exact box; same generator streams), drawn on ``orig_masks``: they depend
    only on the image, its objects and the seed -- never on a model's input size -- so every
    point/box model scored on ``sample`` is given the same prompts.
    """
    seed = int(sample["seed"])
    out = []
    for i, mask in enumerate(sample["orig_masks"]):
        out.append(
            sample_object_prompt(
                mask.bool(),
                make_generator(seed, "sam2-prompt", i),
                prompt_type="box" if prompt == "box" else "point",
                num_points=num_points if prompt == "points" else 1,
                train=False,
            )
        )
    return out


def with_original_prompts(
    batch: dict[str, Any], prompts: list[list[tuple[torch.Tensor, torch.Tensor]]]
) -> dict[str, Any]:
    """``batch`` (a collator's, CPU) with its prompts replaced by ``prompts`` (per image, per
    object; original pixels) mapped into the batch's ``R x R`` input frame."""
    res = int(batch["pixel_values"].shape[-1])
    for bi, objs in enumerate(prompts):
        size = batch["orig_sizes"][bi]
        for j, (pts, lab) in enumerate(objs):
            n = int(batch["num_prompt_points"][bi, j])
            if n != len(lab) or not torch.equal(batch["input_labels"][bi, j, :n], lab):
                raise RuntimeError("original-frame prompts do not match the collator's objects.")
            xy = to_model_coords(pts, size, res)
            batch["input_points"][bi, j, :n] = xy
            if bool(batch["has_box"][bi, j]):
                batch["input_boxes"][bi, j] = xy.reshape(4)
    return batch


def sam2_decode(
    module: torch.nn.Module,
    embeddings: list[torch.Tensor],
    image_index: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor,
    mask_inputs: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best low-res logits (n, 1, h, w) and predicted IoU (n,) for objects with equal point counts.

    The mask choice is :class:`~sam_hf.models.sam2_training.Sam2ForTraining`'s: multimask output for a
    single click without mask prompt (when the model was trained with it), the mask with the
    highest predicted IoU; the single-mask output otherwise.
    """
    multimask = bool(module.multimask_output) and points.shape[1] == 1 and mask_inputs is None
    low, ious, _ = module.decode(embeddings, image_index, points, labels, mask_inputs, multimask)
    best = ious.argmax(-1)
    idx = best[:, None, None, None].expand(-1, 1, *low.shape[-2:])
    return low.gather(1, idx).float(), ious.gather(1, best[:, None]).squeeze(1).float()


def upsample_masks(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, 1, h, w) logits -> (n, H, W) bool masks, as ``Sam2ForTraining.predict`` does."""
    return F.interpolate(low.float(), size=size, mode="bilinear", align_corners=False)[:, 0].gt(0)


@torch.no_grad()
def click_curves(
    module: torch.nn.Module, batch: dict[str, Any], max_clicks: int
) -> list[list[list[float]]]:
    """IoU after each of ``max_clicks`` simulated clicks, per object, per image of a batch.

    ``batch`` is a :class:`~sam_hf.data.collate.Sam2Collator` evaluation batch with
    ``orig_masks`` (and optionally the encoder features as ``image_embeddings``); returns ``curves[i][k]`` = the ``max_clicks`` IoUs of object ``k`` of image
    ``i`` (the first click is the centre click of the object itself).
    """
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}.")
    pixel_values = batch["pixel_values"]
    device = pixel_values.device
    res = int(pixel_values.shape[-1])
    cached = batch.get("image_embeddings")
    embeddings = (
        module.project_features(list(cached))
        if cached is not None
        else module.image_embeddings(pixel_values)
    )
    out = []
    for i, gt_all in enumerate(batch["orig_masks"]):
        size = tuple(int(v) for v in batch["orig_sizes"][i])
        curves: list[list[float]] = []
        for start in range(0, gt_all.shape[0], CLICK_CHUNK):
            gt = gt_all[start : start + CLICK_CHUNK].bool().cpu()
            n = gt.shape[0]
            pred = torch.zeros_like(gt)
            points = torch.zeros((n, 0, 2), device=device)
            labels = torch.zeros((n, 0), dtype=torch.long, device=device)
            low: torch.Tensor | None = None
            image_index = torch.full((n,), i, dtype=torch.long, device=device)
            ious = []
            for _ in range(max_clicks):
                clicks = [correction_click(pred[k], gt[k]) for k in range(n)]
                xy = to_model_coords(torch.tensor([c[:2] for c in clicks]), size, res)
                lab = torch.tensor([c[2] for c in clicks], dtype=torch.long)
                points = torch.cat([points, xy[:, None].to(device)], dim=1)
                labels = torch.cat([labels, lab[:, None].to(device)], dim=1)
                low, _ = sam2_decode(module, embeddings, image_index, points, labels, low)
                pred = upsample_masks(low, size).cpu()
                ious.append(mask_iou(pred, gt).double())
            curves.extend(torch.stack(ious, dim=1).tolist())
        out.append(curves)
    return out


def number_of_clicks(ious: Sequence[float], threshold: float, max_clicks: int | None = None) -> int:
    """Clicks needed to reach ``threshold`` IoU: the first ``k`` (1-based) with
    ``ious[k-1] >= threshold``, or ``max_clicks`` (default ``len(ious)``) when never reached.

    This is the standard NoC of interactive segmentation (a failure counts as the click budget,
    not as infinity, so a mean stays finite and a model is not rewarded for giving up).
    """
    cap = len(ious) if max_clicks is None else int(max_clicks)
    for k, v in enumerate(ious[:cap], start=1):
        if v >= threshold:
            return k
    return cap


def click_summary(
    curves: Sequence[Sequence[float]], thresholds: Iterable[float], max_clicks: int
) -> dict[str, Any]:
    """``mIoU@k`` per click, ``NoC@t`` (mean clicks to IoU t) and ``NoF@t`` (objects never
    reaching t) over a list of per-object click curves."""
    arr = np.asarray(curves, dtype=np.float64).reshape(len(curves), max_clicks)
    out: dict[str, Any] = {
        "max_clicks": int(max_clicks),
        "num_objects": len(curves),
        "miou_per_click": arr.mean(0).tolist() if len(curves) else [],
    }
    for t in thresholds:
        tag = f"{round(t * 100):d}"
        noc = [number_of_clicks(c, t, max_clicks) for c in arr.tolist()]
        reached = [any(v >= t for v in c) for c in arr.tolist()]
        out[f"NoC@{tag}"] = float(np.mean(noc)) if noc else float("nan")
        out[f"NoF@{tag}"] = int(len(reached) - sum(reached))
    return out


def sam2_common_metrics(records: Sequence[dict]) -> dict[str, Any]:
    """Mean instance IoU, concept recall (per phrase) and instance recall of SAM2 records.

    With one prompt per ground-truth instance, SAM2 "finds" an instance when the mask for
    that instance's own prompt reaches IoU 0.5; grouping by phrase and averaging over phrases
    mirrors :func:`sam_hf.metrics.concepts.concept_recall`.
    """
    per_phrase: dict[str, list[bool]] = defaultdict(list)
    ious = []
    for r in records:
        for phrase, v in zip(r["phrases"], r["iou"]):
            per_phrase[normalize_phrase(phrase)].append(v >= 0.5)
            ious.append(v)
    if not ious:
        return {
            "mean_instance_iou": float("nan"),
            "concept_recall": float("nan"),
            "instance_recall": float("nan"),
            "num_instances": 0,
        }
    return {
        "mean_instance_iou": float(np.mean(ious)),
        "concept_recall": float(np.mean([np.mean(v) for v in per_phrase.values()])),
        "instance_recall": float(np.mean([v >= 0.5 for v in ious])),
        "num_instances": len(ious),
    }


def _prompt_records(
    module: torch.nn.Module,
    task: Sam2Task,
    samples: list[dict],
    batch: dict[str, Any],
    name: str,
    prompts: list[list[tuple[torch.Tensor, torch.Tensor]]],
) -> list[dict]:
    """Per image of a collated batch: the metrics of ``task.eval_records`` plus what the report
    shows and checks (the predictions as RLE, their scores, the phrases, every object's prompt
    in original pixels, and the clicks of ``point`` for the overlays)."""
    preds = module.predict(batch)
    out = []
    for s, p, rec, objs in zip(samples, preds, task.eval_records(preds), prompts):
        if p["image_id"] != s["image_id"]:
            raise RuntimeError("SAM2 predictions came back out of order.")
        rec.update(
            {
                "index": int(s["index"]),
                "phrases": list(s["phrases"]),
                "pred": [rle.encode(m) for m in p["pred_masks"].numpy()],
                "scores": p["scores"].float().tolist(),
                "prompt_points": [pts.tolist() for pts, _ in objs],
                "prompt_labels": [lab.tolist() for _, lab in objs],
            }
        )
        if name == "point":
            rec["points"] = [pts[0].tolist() for pts, _ in objs]
        out.append(rec)
    return out


def _summarize(
    result: ModelEvaluation,
    task: Sam2Task,
    records: dict[str, list[dict]],
    curves: list[list[float]],
    settings: EvalSettings,
) -> None:
    """Fill ``result`` with every protocol's metrics, common columns and per-image IoUs."""
    for name, recs in records.items():
        result.metrics[name] = task.compute_metrics(recs)
        result.records[name] = recs
        result.common[name] = sam2_common_metrics(recs)
        result.instance_ious[name] = [v for r in recs for v in r["iou"]]
        result.per_image_iou[name] = {
            r["image_id"]: float(np.mean(r["iou"])) for r in recs if r["iou"]
        }
    if settings.max_clicks > 0:
        result.click_curves = curves
        result.clicks = click_summary(curves, settings.noc_thresholds, settings.max_clicks)


def evaluate_sam2(
    loaded: LoadedModel,
    ds: datasets.Dataset,
    settings: EvalSettings,
    label: str = "sam2",
    role: str = "model",
    progress: bool = True,
) -> ModelEvaluation:
    """The SAM2 protocol on ``ds``: each prompt type, then the clicks curve (see module doc)."""
    settings, _ = resolve_settings(settings)
    for p in settings.sam2_prompts:
        if p not in SAM2_PROMPTS:
            raise EvaluationError(f"unknown SAM2 prompt {p!r}; choose from {SAM2_PROMPTS}.")
    task = Sam2Task()
    module = loaded.module
    device = next(module.parameters()).device
    eval_ds = SegmentationDataset.with_processor(
        ds, loaded.processor, loaded.resolution, settings.seed, train=False, keep_orig_masks=True
    )
    collators = {
        settings.prompt_name(p): (p, Sam2Collator(_collator_cfg(p, settings.num_points), False))
        for p in settings.sam2_prompts
    }
    records: dict[str, list[dict]] = {name: [] for name in collators}
    curves: list[list[float]] = []
    loader = sample_loader(eval_ds, settings.batch_size, settings.num_workers)
    desc = f"{label} ({family_name(loaded.family)} prompts + clicks)"
    for samples in tqdm(loader, desc=desc, disable=not progress):
        kept = [s for s in samples if s["masks"].shape[0] > 0]
        if not kept:
            continue
        batch: dict[str, Any] = {}
        features = None
        for name, (prompt, collator) in collators.items():
            prompts = [original_prompts(s, prompt, settings.num_points) for s in kept]
            batch = to_device(with_original_prompts(collator(kept), prompts), device)
            if features is None:
                # the image encoder runs once per batch; every protocol reuses its features
                features = module.encoder_features(batch["pixel_values"])
            batch["image_embeddings"] = features
            records[name] += _prompt_records(module, task, kept, batch, name, prompts)
        if settings.max_clicks > 0:
            # any protocol's batch carries the images and original masks the clicks need
            if not batch:
                batch = to_device(Sam2Collator(_collator_cfg("point", 1), False)(kept), device)
            for c in click_curves(module, batch, settings.max_clicks):
                curves.extend(c)
    result = ModelEvaluation(label, role, loaded.source, loaded.resolution, loaded.num_parameters)
    _summarize(result, task, records, curves, settings)
    return result
