"""Evaluation protocols for SAM2 (geometric prompts) and SAM3 (text concepts), and the report.

The question this module answers: how far is SAM2's prompt expertise from SAM3's concept
understanding on *your* data, before and after fine-tuning? Both families are scored on the same
images of a prepared split (a ``DatasetDict`` folder written by ``scripts/prepare_*``), each
with its own protocol, plus metrics that mean the same for both:

SAM2 (prompts from the ground truth, seeded by the sample seed, never stored)
    * ``point``: one click at the object's centre (the mask pixel farthest from its border);
    * ``points3``: that click plus 2 more drawn uniformly from the mask (``--num-points``);
    * ``box``: the exact tight box.
    Each is its own row of per-instance metrics (:meth:`sam_hf.tasks.core.Sam2Task.compute_metrics`:
    ``mean_iou``, ``mean_dice``, ``mean_boundary_f1``, ``iou_at_50``), the same numbers the
    trainer logs for its own prompt type.

    **Clicks-to-IoU and NoC** (interactive segmentation, the RITM/SAM protocol): starting from an
    empty prediction, each click is placed by :func:`sam_hf.data.prompts.sample_correction_clicks`
    with ``method="center"`` at the deepest pixel of the larger error region of the current
    prediction (positive in a false negative, negative in a false positive), at the image's
    original resolution, where the IoU is measured. The model gets all clicks so far plus its
    previous low-resolution logits as mask prompt. ``NoC@85`` / ``NoC@90`` is the number of
    clicks an object needs to reach IoU 0.85 / 0.90, counted as ``max_clicks`` when it never
    does (the standard definition); ``NoF`` counts those failures. ``mIoU@k`` is the mean IoU
    after ``k`` clicks.

SAM3 (text only)
    Every phrase of each image plus known-absent negatives: the (image, phrase) pairs of
    :func:`sam_hf.tasks.core.sam3_eval_pairs`, the function the trainer's evaluation builds its pairs
    with. Seed, ``negative_ratio``, ``hard_negatives`` and the training images the vocabulary
    negatives come from are read from the training config saved with the fine-tuned model
    (:func:`resolve_settings`; the recipes' defaults without one), so ``evaluate.py sam3`` on a
    run's ``final/`` scores the pairs of the run's final evaluation. Scored with
    :meth:`sam_hf.tasks.core.Sam3Task.compute_metrics`
    (cgF1, pmF1, IL_MCC, concept recall, grounding and attribute accuracy, COCO mask AP,
    Hungarian-matched instance IoU). The metric contract keeps predictions scoring >= 0.5; a
    different ``score_threshold`` is applied by remapping scores monotonically so that the
    threshold lands on 0.5 (:func:`remap_scores`): rank-based numbers (mask AP) do not change,
    and every thresholded number then means "score >= score_threshold".

Common to both (the fair SAM2-vs-SAM3 columns)
    * ``mean_instance_iou``: per ground-truth instance, SAM2's IoU for the prompt taken from
      that instance vs SAM3's IoU of the prediction Hungarian-matched to it from the text
      (0 when none is kept) -- :func:`sam_hf.metrics.matching.mean_matched_iou`;
    * ``concept_recall``: share of instances found with IoU >= 0.5, per phrase, averaged over
      phrases (SAM3: :func:`sam_hf.metrics.concepts.concept_recall`; SAM2 with one prompt per instance,
      where "found" is its own mask reaching IoU 0.5, grouped by the same phrases);
    * ``instance_recall``: the same share pooled over all instances.
    The prompts differ (SAM2 is told *where* each object is; SAM3 only *what* to look for), and
    the report says so next to every number.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sam_hf.data import rle
from sam_hf.data.prompts import make_generator, sample_correction_clicks
from sam_hf.data.queries import normalize_phrase
from sam_hf.data.transforms import SegmentationDataset
from sam_hf.metrics.concepts import concept_recall
from sam_hf.metrics.masks import mask_iou
from sam_hf.metrics.matching import matched_instance_ious, remap_scores

logger = logging.getLogger("sam_hf")

FAMILIES = ("sam2", "sam3")
#: SAM2 prompt protocols: name -> (prompt_type, number of points or None).
SAM2_PROMPTS = ("point", "points", "box")
#: IoU targets of the NoC numbers (NoC@85, NoC@90).
NOC_THRESHOLDS = (0.85, 0.90)
#: Objects decoded at once in the clicks protocol (bounds memory on 100+ object images).
CLICK_CHUNK = 32
#: Files a saved transformers folder holds its weights in.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
#: Where a run keeps its resolved config (final/ has training_config.yaml, the run config.yaml).
_RUN_CONFIG_NAMES = ("training_config.yaml", "config.yaml")
#: Default resolutions of the tiny random configs.
_TINY_RESOLUTION = {"sam2-tiny": 256, "sam3-tiny": 224}


class EvaluationError(ValueError):
    """A model source or dataset cannot be evaluated; the message says how to fix it."""


# =============================================================================================
# Model sources
# =============================================================================================


@dataclass
class ModelSource:
    """What a user named, resolved into what ``build_sam2`` / ``build_sam3`` need.

    ``kind`` is ``"tiny"`` (``sam2-tiny`` / ``sam3-tiny``, random weights seeded by ``seed``),
    ``"folder"`` (a ``save_pretrained`` folder such as a run's ``final/`` or ``best/``),
    ``"adapter"`` (a peft folder; ``base`` is built first and the adapter merged into it) or
    ``"hub"`` (a Hub id).
    """

    source: str
    family: str
    kind: str
    base: str
    resolution: int | None = None
    seed: int | None = None
    adapter: str | None = None
    multimask_output: bool = True
    run_config: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "adapter":
            return f"LoRA adapter {self.adapter} on {self.base}"
        if self.kind == "tiny":
            return f"{self.base} (random weights, seed {self.seed})"
        return f"{self.base} ({self.kind})"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvaluationError(f"cannot read {path}: {e}") from e


def _run_config_near(path: Path) -> dict:
    """The resolved training config saved beside a model folder (or one level up), if any."""
    import yaml

    for folder in (path, path.parent, path.parent.parent):
        for name in _RUN_CONFIG_NAMES:
            f = folder / name
            if f.is_file():
                try:
                    data = yaml.safe_load(f.read_text()) or {}
                except yaml.YAMLError:
                    continue
                if isinstance(data, dict) and "model_name_or_path" in data:
                    return data
    return {}


def _family_of_model_type(model_type: Any) -> str | None:
    mt = str(model_type or "")
    if mt.startswith("sam3"):
        return "sam3"
    if mt.startswith("sam2"):
        return "sam2"
    return None


def _config_resolution(config: dict, family: str) -> int | None:
    """Input size stored in a config.json dict (written there by ``set_*_resolution``)."""
    try:
        size = config["vision_config"]["backbone_config"]["image_size"]
    except (KeyError, TypeError):
        return None
    if isinstance(size, list | tuple):
        size = size[0]
    return int(size) if size else None


def _adapter_dir(path: Path) -> Path | None:
    for cand in (path, path / "adapter"):
        if (cand / "adapter_config.json").is_file():
            return cand
    return None


def resolve_source(
    source: str, family: str | None = None, seed: int = 42, resolution: int | None = None
) -> ModelSource:
    """Resolve a model source (tiny name, folder, adapter folder, run dir or Hub id).

    ``family`` is checked against what the source holds (``None``: inferred). ``resolution``
    overrides the one saved with the model (config.json, or the run config of an adapter).
    """
    src = str(source).strip()
    if not src:
        raise EvaluationError("empty model source.")
    if family is not None and family not in FAMILIES:
        raise EvaluationError(f"family must be one of {FAMILIES}, got {family!r}.")

    def check(found: str | None, what: str) -> str:
        if found is None:
            if family is None:
                raise EvaluationError(
                    f"cannot tell whether {src!r} is SAM2 or SAM3 ({what}); use the sam2/sam3 "
                    "mode or the --sam2/--sam3 option that names its family."
                )
            return family
        if family is not None and found != family:
            raise EvaluationError(
                f"{src!r} holds a {found.upper()} model ({what}), but it was given as "
                f"{family.upper()}; pass it with --{found} instead."
            )
        return found

    if src in _TINY_RESOLUTION:
        fam = check(src.split("-")[0], "tiny config name")
        return ModelSource(src, fam, "tiny", src, resolution or _TINY_RESOLUTION[src], seed)

    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EvaluationError(
                f"{src} is a file; give a model folder (config.json + model.safetensors), a "
                "peft adapter folder, a run directory, a Hub id or sam2-tiny / sam3-tiny."
            )
        # A run directory: evaluate its final/ export.
        if not (path / "config.json").is_file() and _adapter_dir(path) is None:
            for sub in ("final", "best"):
                if (path / sub).is_dir():
                    logger.info("%s is a run directory; evaluating %s/%s.", src, src, sub)
                    return resolve_source(str(path / sub), family, seed, resolution)
        run_cfg = _run_config_near(path)
        multimask = bool(run_cfg.get("multimask_output", True))
        has_weights = any((path / w).is_file() for w in _WEIGHT_FILES)
        if (path / "config.json").is_file() and has_weights:
            config = _read_json(path / "config.json")
            fam = check(_family_of_model_type(config.get("model_type")), "config.json model_type")
            res = resolution or _config_resolution(config, fam)
            return ModelSource(src, fam, "folder", str(path), res, seed, None, multimask, run_cfg)
        adapter = _adapter_dir(path)
        if adapter is not None:
            acfg = _read_json(adapter / "adapter_config.json")
            base_cls = str((acfg.get("auto_mapping") or {}).get("base_model_class", "")).lower()
            fam_found = (
                "sam3" if "sam3" in base_cls else "sam2" if "sam2" in base_cls else None
            ) or run_cfg.get("family")
            if fam_found is None and run_cfg:
                fam_found = "sam2" if "prompt_type" in run_cfg else "sam3"
            fam = check(fam_found, "adapter_config.json base_model_class")
            base = acfg.get("base_model_name_or_path") or run_cfg.get("model_name_or_path")
            if not base:
                raise EvaluationError(
                    f"{adapter}: adapter_config.json names no base_model_name_or_path and no "
                    "training_config.yaml/config.yaml beside it names model_name_or_path; add "
                    "the base model to adapter_config.json."
                )
            res = resolution or run_cfg.get("resolution")
            if res is None and str(base) in _TINY_RESOLUTION:
                res = _TINY_RESOLUTION[str(base)]
            return ModelSource(
                src,
                fam,
                "adapter",
                str(base),
                int(res) if res else None,
                int(run_cfg.get("seed", seed)),
                str(adapter),
                multimask,
                run_cfg,
            )
        raise EvaluationError(
            f"{src} is neither a saved model (config.json + model.safetensors) nor a peft "
            "adapter folder (adapter_config.json), nor a run directory with final/."
        )
    if src.startswith(("/", "./", "../", "~")) or src.count("/") > 1:
        raise EvaluationError(f"model source {src!r}: no such folder.")
    low = src.lower()
    fam = check("sam3" if "sam3" in low else "sam2" if "sam2" in low else None, "Hub id")
    return ModelSource(src, fam, "hub", src, resolution, seed)


@dataclass
class LoadedModel:
    """A model ready for evaluation: the training wrapper (in eval mode) and its processor."""

    source: ModelSource
    module: torch.nn.Module
    processor: Any
    config: Any
    num_parameters: int

    @property
    def resolution(self) -> int:
        return int(self.config.resolution)

    @property
    def family(self) -> str:
        return self.source.family


def build_config(src: ModelSource, **overrides: Any) -> Any:
    """The validated Sam2Config / Sam3Config the builders read for ``src``."""
    from sam_hf.config import Sam2Config, Sam3Config, load_config

    values: dict[str, Any] = {"model_name_or_path": src.base, "seed": src.seed or 0}
    if src.resolution:
        values["resolution"] = int(src.resolution)
    if src.family == "sam2":
        values["multimask_output"] = src.multimask_output
        values.update(overrides)
        return load_config(Sam2Config, None, values)
    values.update(overrides)
    return load_config(Sam3Config, None, values)


def load_model(
    source: ModelSource | str,
    family: str | None = None,
    seed: int = 42,
    resolution: int | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Build the model a source names, merge an adapter into it, and wrap it for prediction.

    Adapters are merged (``merge_and_unload``) so evaluation runs the same plain
    ``Sam2Model`` / ``Sam3Model`` a merged export would load, at no extra cost per call.
    """
    src = (
        source
        if isinstance(source, ModelSource)
        else resolve_source(source, family, seed, resolution)
    )
    cfg = build_config(src)
    if src.family == "sam2":
        from sam_hf.models.sam2 import build_sam2
        from sam_hf.models.sam2_training import Sam2ForTraining

        model, processor = build_sam2(cfg)
    else:
        from sam_hf.models.sam3 import Sam3ForTraining, build_sam3

        model, processor = build_sam3(cfg)
    if src.adapter is not None:
        from peft import PeftModel

        from sam_hf.models.lora import merge_to_base

        model = merge_to_base(PeftModel.from_pretrained(model, src.adapter))
    wrapper_cls = Sam2ForTraining if src.family == "sam2" else Sam3ForTraining
    module = wrapper_cls(model, cfg).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    return LoadedModel(src, module, processor, cfg, n_params)


# =============================================================================================
# Data
# =============================================================================================


def load_split(data_dir: str | os.PathLike, split: str) -> tuple[datasets.Dataset, Any]:
    """One split of a prepared DatasetDict folder, and the whole DatasetDict (for the vocab)."""
    path = Path(data_dir)
    if not path.exists():
        raise EvaluationError(
            f"--data {path} does not exist. Prepare a split with scripts/prepare_mineapple.py, "
            "scripts/prepare_coco_text.py or scripts/make_synthetic_orchard.py first."
        )
    dd = datasets.load_from_disk(str(path))
    if isinstance(dd, datasets.Dataset):
        return dd, datasets.DatasetDict({split: dd})
    if split not in dd:
        raise EvaluationError(f"{path} has splits {sorted(dd)}; --split {split!r} is not one.")
    return dd[split], dd


def phrase_coverage(ds: datasets.Dataset) -> dict[str, int]:
    """How many (non-crowd) objects carry a noun phrase, and how many fall back to the category."""
    with_phrase = without = 0
    for row in ds.select_columns(["objects"]):
        for obj in row["objects"]:
            if obj.get("iscrowd"):
                continue
            if str(obj.get("noun_phrase") or "").strip():
                with_phrase += 1
            else:
                without += 1
    return {"objects": with_phrase + without, "with_phrase": with_phrase, "category": without}


def _identity(samples: list) -> list:
    return samples


def _sample_loader(ds: SegmentationDataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        ds, batch_size=batch_size, shuffle=False, collate_fn=_identity, num_workers=num_workers
    )


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a batch onto ``device``; per-image lists (original masks) stay on the CPU."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# =============================================================================================
# SAM2 protocol
# =============================================================================================


@dataclass
class EvalSettings:
    """Everything that decides the numbers besides the model and the data (saved in the report).

    The fields that may be ``None`` are left open to :func:`resolve_settings`, which reads them
    from the training config saved with the evaluated model (``training_config.yaml`` beside
    ``final/``, see :data:`RUN_KEYS`), else takes the recipes' defaults -- so a fine-tune is
    scored on the very (image, phrase) pairs and prompts its trainer scored.
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
    #: SAM3 pairs (:func:`sam_hf.tasks.core.sam3_eval_pairs`): negatives per positive phrase,
    #: attribute-swapped negatives, and the training images vocabulary negatives come from
    negative_ratio: float | None = None
    hard_negatives: bool | None = None
    train_split: str | None = None
    max_train_samples: int | None = None
    device: str = "cpu"

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
    from sam_hf.config import Sam3Config

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
    from sam_hf.tasks.core import SAM3_PAIR_KEYS

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


def sam2_decode(
    module: torch.nn.Module,
    embeddings: list[torch.Tensor],
    image_index: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor,
    mask_inputs: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best low-res logits (n, 1, h, w) and predicted IoU (n,) for objects with equal point counts.

    The mask choice is :class:`~sam_hf.models.sam2.Sam2ForTraining`'s: multimask output for a
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


@dataclass
class ModelEvaluation:
    """Everything measured for one model: metrics, per-instance values, raw records."""

    label: str
    role: str
    source: ModelSource
    resolution: int
    num_parameters: int
    #: protocol -> metric dict (SAM2: point / points3 / box; SAM3: text)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: protocol -> per-image records (SAM2: iou/dice/boundary_f1 + RLE predictions; SAM3: the
    #: Sam3Task records) -- written to OUT/records/<label>.json
    records: dict[str, list[dict]] = field(default_factory=dict)
    #: protocol -> common metrics (mean_instance_iou, concept_recall, instance_recall)
    common: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: protocol -> per-instance IoU values (histograms)
    instance_ious: dict[str, list[float]] = field(default_factory=dict)
    #: protocol -> image_id -> mean IoU of that image's instances (best/worst overlays)
    per_image_iou: dict[str, dict[str, float]] = field(default_factory=dict)
    #: clicks protocol: summary (json) and raw per-object curves
    clicks: dict[str, Any] | None = None
    click_curves: list[list[float]] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.source.family

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "role": self.role,
            "source": self.source.source,
            "kind": self.source.kind,
            "loaded_as": self.source.describe(),
            "resolution": self.resolution,
            "num_parameters": self.num_parameters,
            "metrics": self.metrics,
            "clicks": self.clicks,
            "common": self.common,
            "per_image_iou": self.per_image_iou,
        }


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


def evaluate_sam2(
    loaded: LoadedModel,
    ds: datasets.Dataset,
    settings: EvalSettings,
    label: str = "sam2",
    role: str = "model",
    progress: bool = True,
) -> ModelEvaluation:
    """The SAM2 protocol on ``ds``: each prompt type, then the clicks curve (see module doc)."""
    from sam_hf.data.collate import Sam2Collator
    from sam_hf.tasks.core import Sam2Task

    settings, _ = resolve_settings(settings)
    task = Sam2Task()
    module = loaded.module
    device = next(module.parameters()).device
    eval_ds = SegmentationDataset.with_processor(
        ds, loaded.processor, loaded.resolution, settings.seed, train=False, keep_orig_masks=True
    )
    prompts = [p for p in settings.sam2_prompts]
    for p in prompts:
        if p not in SAM2_PROMPTS:
            raise EvaluationError(f"unknown SAM2 prompt {p!r}; choose from {SAM2_PROMPTS}.")
    collators = {
        settings.prompt_name(p): Sam2Collator(_collator_cfg(p, settings.num_points), train=False)
        for p in prompts
    }
    result = ModelEvaluation(label, role, loaded.source, loaded.resolution, loaded.num_parameters)
    records: dict[str, list[dict]] = {name: [] for name in collators}
    curves: list[list[float]] = []
    loader = _sample_loader(eval_ds, settings.batch_size, settings.num_workers)
    for samples in tqdm(loader, desc=f"{label} (SAM2 prompts + clicks)", disable=not progress):
        kept = [s for s in samples if s["masks"].shape[0] > 0]
        if not kept:
            continue
        batch: dict[str, Any] = {}
        features = None
        for name, collator in collators.items():
            batch = _to_device(collator(kept), device)
            if features is None:
                # the image encoder runs once per batch; every protocol reuses its features
                features = module.encoder_features(batch["pixel_values"])
            batch["image_embeddings"] = features
            preds = module.predict(batch)
            for bi, (s, p, rec) in enumerate(zip(kept, preds, task.eval_records(preds))):
                if p["image_id"] != s["image_id"]:
                    raise RuntimeError("SAM2 predictions came back out of order.")
                rec.update(
                    {
                        "index": int(s["index"]),
                        "phrases": list(s["phrases"]),
                        "pred": [rle.encode(m) for m in p["pred_masks"].numpy()],
                        "scores": p["scores"].float().tolist(),
                    }
                )
                if name == "point":
                    pts = batch["input_points"][bi, : s["masks"].shape[0], 0].cpu()
                    rec["points"] = from_model_coords(
                        pts, s["orig_size"], loaded.resolution
                    ).tolist()
                records[name].append(rec)
        if settings.max_clicks > 0:
            # any protocol's batch carries the images and original masks the clicks need
            if not batch:
                batch = _to_device(Sam2Collator(_collator_cfg("point", 1), False)(kept), device)
            for c in click_curves(module, batch, settings.max_clicks):
                curves.extend(c)
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
    return result


# =============================================================================================
# SAM3 protocol
# =============================================================================================


def sam3_vocab_split(dd: Any, split: str, train_split: str = "train") -> str:
    """Where SAM3's vocabulary negatives come from: the training split, as in training (the
    evaluated split itself when the data has no such split)."""
    return train_split if train_split in dd else split


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
    :func:`sam_hf.tasks.core.sam3_eval_pairs` -- the function the trainer's evaluation builds its
    pairs with -- under ``settings``' seed, negative ratio and hard negatives, with negatives
    drawn from ``vocab_ds`` (the training images); all SAM3 metrics."""
    from sam_hf.tasks.core import Sam3Task, sam3_eval_pairs

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
    loader = _sample_loader(eval_ds, settings.batch_size, settings.num_workers)
    for samples in tqdm(loader, desc=f"{label} (SAM3 text)", disable=not progress):
        batch = _to_device(collator(samples), device)
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


def _pairs_from_records(records: Sequence[dict]) -> list[dict]:
    pairs = []
    for r in records:
        for rec in r["pairs"]:
            size = tuple(rec["size"])
            pairs.append(
                {
                    "phrase": rec["phrase"],
                    "gt": torch.from_numpy(rle.decode_many(rec["gt"], *size)),
                    "pred": torch.from_numpy(rle.decode_many(rec["pred"], *size)),
                    "scores": torch.tensor(rec["scores"], dtype=torch.float32),
                }
            )
    return pairs


def sam3_common_metrics(records: Sequence[dict], metrics: dict[str, Any]) -> dict[str, Any]:
    """SAM3's side of the common columns: matched instance IoU, concept and instance recall.

    Instance recall is :func:`sam_hf.metrics.concepts.concept_recall` with every pair put under one
    phrase, i.e. matched instances over all instances.
    """
    pairs = _pairs_from_records(records)
    n = sum(int(p["gt"].shape[0]) for p in pairs)
    pooled = concept_recall([{**p, "phrase": "all"} for p in pairs]) if n else float("nan")
    return {
        "mean_instance_iou": float(metrics.get("mean_iou", float("nan"))) if n else float("nan"),
        "concept_recall": float(metrics.get("concept_recall", float("nan"))),
        "instance_recall": float(pooled),
        "num_instances": n,
    }


# =============================================================================================
# Running a whole evaluation
# =============================================================================================


@dataclass
class ModelSpec:
    """One model to evaluate: a source, its family and its role in the comparison."""

    label: str
    source: str
    family: str
    role: str  # "fine-tuned" | "baseline" | "model"
    resolution: int | None = None


@dataclass
class Evaluation:
    """A finished evaluation: settings, data description, every model's results, notes."""

    mode: str
    data: dict[str, Any]
    settings: EvalSettings
    models: list[ModelEvaluation]
    notes: list[str] = field(default_factory=list)
    image_indices: dict[str, int] = field(default_factory=dict)

    def by_family(self, family: str) -> list[ModelEvaluation]:
        return [m for m in self.models if m.family == family]

    def comparisons(self) -> dict[str, dict[str, Any]]:
        """Fine-tuned minus baseline, per family and protocol (numbers only)."""
        out: dict[str, dict[str, Any]] = {}
        for fam in FAMILIES:
            tuned = [m for m in self.by_family(fam) if m.role == "fine-tuned"]
            base = [m for m in self.by_family(fam) if m.role == "baseline"]
            if not (tuned and base):
                continue
            t, b = tuned[0], base[0]
            delta: dict[str, dict[str, float]] = {}
            for proto, tm in t.metrics.items():
                bm = b.metrics.get(proto, {})
                delta[proto] = {
                    k: float(v) - float(bm[k])
                    for k, v in tm.items()
                    if _is_number(v) and _is_number(bm.get(k)) and not k.startswith("num_")
                }
            if t.clicks and b.clicks:
                delta["clicks"] = {
                    k: float(v) - float(b.clicks[k])
                    for k, v in t.clicks.items()
                    if k.startswith(("NoC", "NoF")) and _is_number(v)
                }
            out[fam] = {"fine_tuned": t.label, "baseline": b.label, "delta": delta}
        return out

    def gap_rows(self) -> list[dict[str, Any]]:
        """The SAM2-vs-SAM3 table: common metrics per model and protocol, with the prompt."""
        rows = []
        for m in self.models:
            for proto, c in m.common.items():
                rows.append(
                    {
                        "model": m.label,
                        "family": m.family,
                        "role": m.role,
                        "protocol": proto,
                        "prompt": self.settings.prompt_label(proto),
                        **c,
                    }
                )
        return rows

    def to_json(self) -> dict[str, Any]:
        return _jsonable(
            {
                "mode": self.mode,
                "data": self.data,
                "settings": dataclasses.asdict(self.settings),
                "models": {m.label: m.to_json() for m in self.models},
                "comparisons": self.comparisons(),
                "sam2_vs_sam3": self.gap_rows(),
                "notes": self.notes,
            }
        )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _jsonable(obj: Any) -> Any:
    """Plain JSON: NaN/inf become None (json.dumps would write invalid ``NaN`` tokens)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def select_images(ds: datasets.Dataset, max_images: int) -> datasets.Dataset:
    """The first ``max_images`` images (all when 0): the same images for every model."""
    return ds.select(range(min(max_images, len(ds)))) if max_images > 0 else ds


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
    cover = phrase_coverage(ds)
    families = {s.family for s in specs}
    if "sam2" in families and cover["objects"] == 0:
        raise EvaluationError(
            f"{data_dir} [{split}] has no instance masks: SAM2 is prompted from ground-truth "
            "instances. Use a split with objects (e.g. the synthetic orchard)."
        )
    data = {
        "path": str(data_dir),
        "split": split,
        "num_images": len(ds),
        "num_images_in_split": len(ds_full),
        "num_objects": cover["objects"],
        "image_ids": list(ds["image_id"]),
    }
    if "sam3" in families:
        from sam_hf.tasks.core import sam3_training_split

        vocab_split = sam3_vocab_split(dd, split, settings.train_split)
        # the training images, as the trainer reads them (the first max_train_samples)
        vocab_ds = sam3_training_split(dd, settings) if vocab_split in dd else ds_full
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
    results: list[ModelEvaluation] = []
    for spec in specs:
        src = resolve_source(spec.source, spec.family, settings.seed, spec.resolution)
        loaded = loader(src, device=settings.device)
        logger.info("Evaluating %s: %s at %d px", spec.label, src.describe(), loaded.resolution)
        if spec.family == "sam2":
            res = evaluate_sam2(loaded, ds, settings, spec.label, spec.role, progress)
        else:
            res = evaluate_sam3(
                loaded,
                ds,
                vocab_ds,
                settings,
                spec.label,
                spec.role,
                progress,
            )
        results.append(res)
        del loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if "sam2" in families:
        n_empty = sum(1 for objs in ds["objects"] if not [o for o in objs if not o["iscrowd"]])
        if n_empty:
            notes.append(
                f"{n_empty} images without objects cannot be prompted: SAM2 skips them, SAM3 "
                "still answers their negative phrases."
            )
    if settings.score_threshold != 0.5 and "sam3" in families:
        notes.append(
            f"SAM3 score threshold {settings.score_threshold}: scores were remapped "
            "monotonically so that the metrics' 0.5 cut equals it (mask AP is unchanged)."
        )
    index = {iid: i for i, iid in enumerate(data["image_ids"])}
    return Evaluation(mode, data, settings, results, notes, index)
