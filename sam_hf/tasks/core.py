"""Per-family glue between the shared trainer and the SAM2 / SAM3 pieces.

A task says how to get the data ready, build the model, turn predictions into records that
can be gathered across ranks, score them, and export a plain-transformers folder. Everything
heavy lives in ``sam_hf.models``, ``sam_hf.data``, ``sam_hf.losses`` and ``sam_hf.metrics.core``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from safetensors.torch import load_file

from sam_hf.config.args import ConfigError
from sam_hf.data.output import save_atomically
from sam_hf.data.transforms import SegmentationDataset
from sam_hf.features import cache
from sam_hf.metrics.core import remap_scores

logger = logging.getLogger("sam_hf")


def load_splits(cfg: Any) -> datasets.DatasetDict:
    """The prepared DatasetDict, with a message that says how to make one when it is missing."""
    path = Path(cfg.dataset_path)
    if not path.exists():
        prepare = (
            f"python scripts/prepare_coco_text.py --images DIR --annotations FILE.json --out {path}"
            if cfg.family == "sam3"
            else f"python scripts/prepare_mineapple.py --source DIR --out {path}"
        )
        raise ConfigError(
            f"dataset_path {path} does not exist. Check the path, or prepare it: `{prepare}` "
            "(scripts/ has a converter per format). To generate the synthetic demo data "
            f"there instead, pass --synthetic_num_images N together with --dataset_path {path}."
        )
    dd = datasets.load_from_disk(str(path))
    if not isinstance(dd, datasets.DatasetDict):
        raise ConfigError(f"{path} holds a single Dataset; expected a DatasetDict with splits.")
    for split in (cfg.train_split, cfg.eval_split):
        if split not in dd:
            raise ConfigError(
                f"{path} has splits {sorted(dd)}, but the config asks for {split!r} "
                "(train_split / eval_split)."
            )
    return dd


def _subset(ds: datasets.Dataset, n: int) -> datasets.Dataset:
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


def train_eval_datasets(
    cfg: Any, processor: Any, train_split: datasets.Dataset, eval_split: datasets.Dataset
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The augmented training view and the full-resolution evaluation view of two splits."""
    return train_view(cfg, processor, train_split), eval_view(cfg, processor, eval_split)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a saved folder, only through safetensors (never pickle)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"init_from {path} has no *.safetensors weights.")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd


def _check_model_type(path: Path, expected: str) -> None:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{path} is not a saved model folder (no config.json).")
    got = json.loads(cfg_file.read_text()).get("model_type")
    if got != expected:
        raise ConfigError(f"{path} holds a {got!r} model, but this recipe trains {expected!r}.")


def prepare_synthetic(cfg: Any, view: str) -> None:
    """Generate and convert synthetic data into ``cfg.dataset_path`` when it is absent.

    ``view`` picks how the orchard is read: ``minneapple`` (instance masks, for SAM2) or
    ``coco_text`` (noun phrases and negatives, for SAM3). Shapes are written directly. The
    DatasetDict is saved into a temporary folder and renamed (``save_atomically``, with the
    output marker), so an interrupted preparation never looks like a prepared dataset.
    """
    path = Path(cfg.dataset_path)
    if path.exists() or cfg.synthetic_num_images <= 0:
        return
    size = tuple(cfg.synthetic_image_size)
    logger.info(
        "%s is absent: generating %d synthetic %s images.",
        path,
        cfg.synthetic_num_images,
        cfg.synthetic_kind,
    )
    if cfg.synthetic_kind == "shapes":
        from sam_hf.data.synthetic.shapes import make_shapes_dataset

        ds = make_shapes_dataset(cfg.synthetic_num_images, seed=cfg.seed, image_size=size)
        parts = ds.train_test_split(test_size=0.1, seed=cfg.seed)
        dd = datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]})
    else:
        from sam_hf.data.synthetic.orchard import make_synthetic_orchard

        raw = path.with_name(path.name + "_raw")
        make_synthetic_orchard(  # replaces only orchard files of an earlier, interrupted run
            raw,
            num_images=cfg.synthetic_num_images,
            seed=cfg.seed,
            image_size=size,
            zoom=cfg.synthetic_zoom,
            overwrite=True,
        )
        if view == "minneapple":
            from sam_hf.data.sources.minneapple import convert_minneapple

            dd = convert_minneapple(raw / "minneapple", val_fraction=0.2, seed=cfg.seed)
        else:
            from sam_hf.data.sources.coco import convert_coco_text

            coco = raw / "coco_text"
            dd = datasets.DatasetDict(
                {
                    "train": convert_coco_text(
                        coco / "images", coco / "annotations" / "train.json"
                    )["train"],
                    "validation": convert_coco_text(
                        coco / "images", coco / "annotations" / "val.json", split="validation"
                    )["validation"],
                }
            )
    save_atomically(dd, path, command="prepare_synthetic")


def maybe_lora(model: torch.nn.Module, cfg: Any, family: str) -> torch.nn.Module:
    """Wrap ``model`` in peft LoRA adapters when ``use_lora`` is set (see ``sam_hf.models.lora``)."""
    if not cfg.use_lora:
        return model
    from sam_hf.models.lora import apply_lora

    return apply_lora(model, cfg, family)


@contextlib.contextmanager
def _moved_to(device: torch.device, parts: list[Any]) -> Iterator[None]:
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


def cached_image_dataset(
    ds: SegmentationDataset,
    cfg: Any,
    processor: Any,
    *,
    family: str,
    weights: str,
    parts: list[Any],
    encode: Any,
) -> cache.CachedEmbeddingDataset:
    """``ds`` with its frozen-encoder features attached, computing the missing ones first.

    The main process fills the cache while the others wait (``main_process_first``); they then
    find it complete. Features are computed on the accelerator's device under the run's mixed
    precision, one image at a time, from the unaugmented pixels and their mirror image.
    ``parts`` are the modules / parameters ``encode`` needs, moved there for the fill.
    """
    from accelerate import PartialState

    ip = processor.image_processor
    autocast = cache.autocast_dtype(cfg)
    key = cache.cache_key(
        family=family,
        model_id=cache.resolved_model_id(cfg.model_name_or_path),
        revision=cfg.revision,
        resolution=cfg.resolution,
        weights=weights,
        fingerprint=ds.ds._fingerprint,
        image_mean=ip.image_mean,
        image_std=ip.image_std,
        autocast=autocast,
    )
    store = cache.EmbeddingCache(Path(cfg.dataset_path) / cache.CACHE_DIRNAME, key)
    variants = cache.flip_variants(ds.hflip_prob)
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
            with _moved_to(state.device, parts):
                n = store.fill(
                    lambda i: plain[i]["pixel_values"],
                    len(ds),
                    variants,
                    encode,
                    device=state.device,
                    autocast=autocast,
                )
            logger.info("Embedding cache: %d feature files written to %s.", n, store.dir)
    return cache.CachedEmbeddingDataset(ds, store)


class _TransformersTask:
    """Export and weight loading shared by the families: plain transformers folders."""

    family = ""

    def __init__(self) -> None:
        #: The training module, kept by :meth:`build_model`: ``build_datasets`` fills the
        #: embedding cache with its frozen encoder.
        self.module: torch.nn.Module | None = None
        #: Whether the datasets carry cached image features (set by ``build_datasets``).
        self.cache_on = False

    def cached(self, ds: SegmentationDataset, cfg: Any, processor: Any) -> Any:
        """``ds`` with its frozen-encoder features attached (see :func:`cached_image_dataset`)."""
        assert self.module is not None
        parts = cache.image_cache_parts(self.module.model)
        return cached_image_dataset(
            ds,
            cfg,
            processor,
            family=self.family,
            weights=cache.weights_hash(parts[0], parts[1:]),
            parts=parts,
            encode=self.module.encoder_features,
        )

    def save_pretrained(
        self, module: torch.nn.Module, processor: Any, out_dir: Path, cfg: Any
    ) -> None:
        """A plain transformers folder; with LoRA, ``adapter/`` (peft) and, with ``merge_lora``,
        the merged model beside it, so users need neither peft nor sam_hf to load it."""
        processor.save_pretrained(str(out_dir))
        if not cfg.use_lora:
            module.model.save_pretrained(str(out_dir))
            return
        from sam_hf.models.lora import merge_to_base, save_adapter

        save_adapter(module.model, out_dir)
        if cfg.merge_lora:
            merge_to_base(module.model, copy_model=True).save_pretrained(str(out_dir))

    def build_model(self, cfg: Any) -> tuple[torch.nn.Module, Any]:
        """The training module: model (+ ``init_from`` weights, then LoRA) inside its wrapper."""
        model, processor = self.build_base(cfg)
        if cfg.init_from:
            self.load_weights(model, cfg.init_from)
            logger.info(
                "Initialised weights from %s (fresh optimizer and schedule).", cfg.init_from
            )
        self.module = self.wrap(maybe_lora(model, cfg, self.family), cfg)
        return self.module, processor

    def load_weights(self, model: torch.nn.Module, path: str) -> None:
        """Weights of an earlier fine-tune (a final/ or best/ folder) into a fresh model."""
        p = Path(path)
        _check_model_type(p, self.family)
        missing, unexpected = model.load_state_dict(_load_state_dict(p), strict=False)
        if unexpected or missing:
            raise ConfigError(
                f"init_from {p}: weights do not fit this model (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}); was it trained with another model_name_or_path?"
            )


class Sam2Task(_TransformersTask):
    """SAM2 with geometric prompts on instance masks (MinneApple and friends)."""

    family = "sam2"

    def prepare_data(self, cfg: Any) -> None:
        prepare_synthetic(cfg, view="minneapple")
        load_splits(cfg)  # a wrong path or split fails here, before the model is built

    def build_base(self, cfg: Any) -> tuple[torch.nn.Module, Any]:
        from sam_hf.models.sam2 import build_sam2

        return build_sam2(cfg)

    def wrap(self, model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
        from sam_hf.models.sam2 import Sam2ForTraining

        return Sam2ForTraining(model, cfg)

    def build_datasets(
        self, cfg: Any, processor: Any
    ) -> tuple[SegmentationDataset, SegmentationDataset]:
        dd = load_splits(cfg)
        train, evals = train_eval_datasets(
            cfg,
            processor,
            _subset(dd[cfg.train_split], cfg.max_train_samples),
            _subset(dd[cfg.eval_split], cfg.max_eval_samples),
        )
        self.cache_on = self.module is not None and cache.use_cache(cfg, self.module.model)
        if not self.cache_on:
            return train, evals
        return self.cached(train, cfg, processor), self.cached(evals, cfg, processor)

    def collator(self, cfg: Any, train: bool) -> Any:
        from sam_hf.data.collate import Sam2Collator

        inner = Sam2Collator(cfg, train=train)
        return cache.CachedEmbeddingCollator(inner) if self.cache_on else inner

    def eval_records(self, predictions: list[dict]) -> list[dict]:
        """Per image: per-object IoU, Dice and Boundary F1 at the original resolution."""
        from sam_hf.metrics.core import boundary_f1, dice, mask_iou

        out = []
        for p in predictions:
            pred, gt = p["pred_masks"].bool().cpu(), p["gt_masks"].bool().cpu()
            out.append(
                {
                    "image_id": p["image_id"],
                    "iou": mask_iou(pred, gt).tolist(),
                    "dice": dice(pred, gt).tolist(),
                    "boundary_f1": boundary_f1(pred, gt).tolist(),
                }
            )
        return out

    def overlay_items(
        self, samples: list[dict], preds: list[dict], processor: Any, cfg: Any
    ) -> list[dict]:
        """Images at original size with predicted vs true instance masks, for trackers."""
        from sam_hf.data.overlays import to_uint8_image

        ip = processor.image_processor
        by_id = {p["image_id"]: p for p in preds}
        items = []
        for s in samples:
            p = by_id.get(s["image_id"])
            if p is None:  # an image without objects has no prompts, so no prediction
                continue
            image = to_uint8_image(s["pixel_values"], ip.image_mean, ip.image_std, s["orig_size"])
            items.append(
                {
                    "image": image,
                    "pred_masks": p["pred_masks"].bool().cpu().numpy(),
                    "gt_masks": p["gt_masks"].bool().cpu().numpy(),
                    "image_id": s["image_id"],
                }
            )
        return items

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        """Means over every evaluated object (not over images), plus the object count."""
        iou = np.array([v for r in records for v in r["iou"]], dtype=np.float64)
        if iou.size == 0:
            return {"mean_iou": 0.0, "mean_dice": 0.0, "mean_boundary_f1": 0.0, "num_objects": 0}
        dsc = np.array([v for r in records for v in r["dice"]], dtype=np.float64)
        bf1 = np.array([v for r in records for v in r["boundary_f1"]], dtype=np.float64)
        return {
            "mean_iou": float(iou.mean()),
            "mean_dice": float(dsc.mean()),
            "mean_boundary_f1": float(bf1.mean()),
            "iou_at_50": float((iou >= 0.5).mean()),
            "num_objects": int(iou.size),
            "num_images": len(records),
        }


def _rles(masks: torch.Tensor) -> list[dict]:
    from sam_hf.data import rle

    return [rle.encode(m) for m in masks.bool().cpu().numpy()]


def _unrles(rles: list[dict], size: tuple[int, int]) -> torch.Tensor:
    from sam_hf.data import rle

    return torch.from_numpy(rle.decode_many(rles, *size))


def matched_instance_iou(pairs: list[dict]) -> float:
    """Mean over ground-truth instances of the IoU of its Hungarian-matched kept prediction.

    Each GT instance of a positive pair is matched one-to-one (maximising IoU) to predictions
    scoring at least 0.5; an unmatched instance counts 0. This is SAM3's analogue of SAM2's
    per-object IoU: how well the found masks fit, penalising missed instances.
    """
    from scipy.optimize import linear_sum_assignment

    from sam_hf.metrics.core import pairwise_mask_iou

    total, count = 0.0, 0
    for p in pairs:
        g = p["gt"].shape[0]
        if g == 0:
            continue
        count += g
        keep = p["scores"] >= 0.5
        pred = p["pred"][keep]
        if pred.shape[0] == 0:
            continue
        iou = pairwise_mask_iou(pred, p["gt"])
        rows, cols = linear_sum_assignment(-iou)
        total += float(iou[rows, cols].sum())
    return total / count if count else 0.0


#: The config keys that decide SAM3's evaluation (image, phrase) pairs, besides the evaluated
#: split: per-sample seeds, how many negatives and which kinds, and the training images the
#: vocabulary negatives come from. ``scripts/evaluate.py sam3`` reads them from the training
#: config saved with the model, so it scores the pairs the trainer scored.
SAM3_PAIR_KEYS = ("seed", "negative_ratio", "hard_negatives", "train_split", "max_train_samples")


def sam3_training_split(dd: datasets.DatasetDict, cfg: Any) -> datasets.Dataset:
    """The images SAM3 trains on, which are also where its vocabulary negatives come from:
    the first ``cfg.max_train_samples`` images of ``cfg.train_split`` (all when 0)."""
    return _subset(dd[cfg.train_split], cfg.max_train_samples)


def sam3_eval_pairs(
    cfg: Any, processor: Any, eval_split: datasets.Dataset, vocab_split: datasets.Dataset
) -> tuple[SegmentationDataset, Any]:
    """SAM3's evaluation (image, phrase) pairs: the one definition that the trainer's
    evaluation (:class:`Sam3Task`) and ``scripts/evaluate.py sam3``
    (:func:`sam_hf.eval.protocols.evaluate_sam3`) both call, so on the same model, data and
    config they score the same pairs.

    Returns the evaluation view of ``eval_split`` (:func:`eval_view`: no augmentation,
    per-sample seeds from ``cfg.seed``) and the evaluation collator that turns its samples into
    pairs (:func:`sam_hf.data.queries.sample_queries` with ``train=False``): per image every
    positive phrase, every annotated negative, and ``max(1, ceil(cfg.negative_ratio x
    positives))`` negatives drawn, seeded per sample, from the phrases of ``vocab_split`` (the
    training split, :func:`sam3_training_split`) and, with ``cfg.hard_negatives``, from
    attribute swaps. ``max_phrases_per_image`` limits training queries only.
    """
    from sam_hf.data.queries import PhraseVocab, Sam3Collator

    collator = Sam3Collator(
        cfg, PhraseVocab.from_dataset(vocab_split), processor.tokenizer, train=False
    )
    return eval_view(cfg, processor, eval_split), collator


class Sam3Task(_TransformersTask):
    """SAM3 concept segmentation: every instance of a noun phrase, negatives included."""

    family = "sam3"

    def __init__(self) -> None:
        super().__init__()
        self.vocab: Any = None
        self.score_threshold = 0.5  # cfg.score_threshold, set by ``build_datasets``
        #: The evaluation collator of :func:`sam3_eval_pairs` (set by ``build_datasets``).
        self.eval_collator: Any = None

    def prepare_data(self, cfg: Any) -> None:
        prepare_synthetic(cfg, view="coco_text")
        load_splits(cfg)  # a wrong path or split fails here, before the model is built

    def build_base(self, cfg: Any) -> tuple[torch.nn.Module, Any]:
        from sam_hf.models.sam3 import build_sam3

        return build_sam3(cfg)

    def wrap(self, model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
        from sam_hf.models.sam3 import Sam3ForTraining

        return Sam3ForTraining(model, cfg)

    @staticmethod
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

    def build_datasets(
        self, cfg: Any, processor: Any
    ) -> tuple[SegmentationDataset, SegmentationDataset]:
        dd = load_splits(cfg)
        train_split = sam3_training_split(dd, cfg)
        eval_split = _subset(dd[cfg.eval_split], cfg.max_eval_samples)
        self.check_noun_phrases(train_split, cfg.train_split, cfg.noun_phrase_from_category)
        self.check_noun_phrases(eval_split, cfg.eval_split, cfg.noun_phrase_from_category)
        # the evaluation pairs, exactly as scripts/evaluate.py sam3 builds them
        evals, self.eval_collator = sam3_eval_pairs(cfg, processor, eval_split, train_split)
        # negatives for an image are drawn from the phrases of the other training images (the
        # vocabulary the evaluation pairs drew from)
        self.vocab = self.eval_collator.vocab
        self.tokenizer = processor.tokenizer
        self.score_threshold = cfg.score_threshold
        train = train_view(cfg, processor, train_split)
        if self.module is None:
            return train, evals
        model = self.module.model
        if cache.use_text_cache(cfg, model):
            self.module.text_cache = self.cached_phrases(cfg, processor, [train_split, eval_split])
        self.cache_on = cache.use_cache(cfg, model)
        if not self.cache_on:
            return train, evals
        return self.cached(train, cfg, processor), self.cached(evals, cfg, processor)

    def cached_phrases(
        self, cfg: Any, processor: Any, splits: list[datasets.Dataset]
    ) -> cache.PhraseFeatures:
        """The frozen text encoder's features of every phrase the queries can draw from these
        splits, from the phrase cache beside the data (the main process encodes what is missing
        while the others wait)."""
        from accelerate import PartialState

        from sam_hf.data.queries import candidate_phrases
        from sam_hf.data.tokenizer import PhraseTokenizer

        assert self.module is not None
        model = self.module.model
        tokenizer = PhraseTokenizer(processor.tokenizer)
        autocast = cache.autocast_dtype(cfg)
        key = cache.text_cache_key(
            model_id=cache.resolved_model_id(cfg.model_name_or_path),
            revision=cfg.revision,
            weights=cache.weights_hash(
                model.text_encoder, list(model.text_projection.parameters())
            ),
            tokenizer=f"{type(processor.tokenizer).__name__}:{len(processor.tokenizer)}",
            context_length=tokenizer.context_length,
            autocast=autocast,
        )
        store = cache.PhraseFeatureCache(Path(cfg.dataset_path) / cache.CACHE_DIRNAME, key)
        phrases: set[str] = set()  # every phrase the queries can draw (never empty ones)
        for split in splits:
            rows = split.select_columns(["objects", "negative_phrases"])
            phrases |= candidate_phrases(rows, self.vocab, cfg.hard_negatives)
        state = PartialState()
        with state.main_process_first():
            table = store.load()
            todo = sorted(phrases - set(table))
            if todo:  # the text encoder moves to the device only when it has work
                with _moved_to(state.device, [model.text_encoder, model.text_projection]):
                    table = store.add(
                        table,
                        todo,
                        tokenizer,
                        lambda ids, mask: (
                            (
                                model.get_text_features(input_ids=ids, attention_mask=mask)
                            ).pooler_output
                        ),
                        device=state.device,
                        autocast=autocast,
                    )
        logger.info(
            "Phrase feature cache %s: %d phrases (%d encoded now).",
            store.dir,
            len(table),
            len(todo),
        )
        return cache.PhraseFeatures(table)

    def collator(self, cfg: Any, train: bool) -> Any:
        """Training queries, or the evaluation pairs of :func:`sam3_eval_pairs` (made by
        :meth:`build_datasets`, which must run first)."""
        from sam_hf.data.queries import Sam3Collator

        if train:
            inner = Sam3Collator(cfg, self.vocab, self.tokenizer, train=True)
        elif self.eval_collator is None:
            raise RuntimeError("Sam3Task.collator(train=False) needs build_datasets first.")
        else:
            inner = self.eval_collator
        return cache.CachedEmbeddingCollator(inner) if self.cache_on else inner

    def eval_records(self, predictions: list[dict]) -> list[dict]:
        """Per image, every (image, phrase) pair with masks as RLE (small to gather)."""
        out = []
        for p in predictions:
            pairs = []
            for pair in p["pairs"]:
                size = (
                    tuple(pair["gt"].shape[1:])
                    if pair["gt"].ndim == 3
                    else tuple(pair["pred"].shape[1:])
                )
                rec = {
                    "phrase": pair["phrase"],
                    "size": size,
                    "gt": _rles(pair["gt"]),
                    "pred": _rles(pair["pred"]),
                    # the metrics keep scores >= 0.5: move score_threshold there (rank-safe)
                    "scores": remap_scores(pair["scores"].float(), self.score_threshold)
                    .cpu()
                    .tolist(),
                }
                if pair.get("candidates") is not None:
                    rec["candidates"] = _rles(pair["candidates"])
                    rec["candidate_labels"] = pair["candidate_labels"].bool().cpu().tolist()
                pairs.append(rec)
            out.append({"image_id": p["image_id"], "pairs": pairs})
        return out

    def overlay_items(
        self, samples: list[dict], preds: list[dict], processor: Any, cfg: Any
    ) -> list[dict]:
        """Per image: kept predictions (score >= threshold) of its positive phrases vs their
        ground truth, labelled with the phrase, so a wrong concept shows as a wrong label."""
        from sam_hf.data.overlays import to_uint8_image

        ip = processor.image_processor
        by_id = {p["image_id"]: p for p in preds}
        items = []
        for s in samples:
            pairs = by_id[s["image_id"]]["pairs"]
            h, w = s["orig_size"]
            pred, pred_labels, gt, gt_labels = [], [], [], []
            for pair in pairs:
                keep = pair["scores"] >= cfg.score_threshold
                pred.append(pair["pred"][keep])
                pred_labels += [pair["phrase"]] * int(keep.sum())
                gt.append(pair["gt"])
                gt_labels += [pair["phrase"]] * int(pair["gt"].shape[0])
            empty = torch.zeros((0, h, w), dtype=torch.bool)
            items.append(
                {
                    "image": to_uint8_image(s["pixel_values"], ip.image_mean, ip.image_std, (h, w)),
                    "pred_masks": torch.cat([empty, *pred]).numpy(),
                    "gt_masks": torch.cat([empty, *gt]).numpy(),
                    "pred_labels": pred_labels,
                    "gt_labels": gt_labels,
                    "image_id": s["image_id"],
                }
            )
        return items

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        from sam_hf.metrics.core import (
            attribute_accuracy,
            coco_mask_ap,
            concept_recall,
            grounding_accuracy,
            saco_metrics,
        )

        pairs = []
        for r in records:
            for rec in r["pairs"]:
                pair = {
                    "phrase": rec["phrase"],
                    "gt": _unrles(rec["gt"], rec["size"]),
                    "pred": _unrles(rec["pred"], rec["size"]),
                    "scores": torch.tensor(rec["scores"], dtype=torch.float32),
                }
                if "candidates" in rec:
                    pair["candidates"] = _unrles(rec["candidates"], rec["size"])
                    pair["candidate_labels"] = torch.tensor(
                        rec["candidate_labels"], dtype=torch.bool
                    )
                pairs.append(pair)
        if not pairs:
            return {}
        metrics = dict(saco_metrics(pairs))
        metrics["concept_recall"] = concept_recall(pairs)
        metrics["grounding_accuracy"] = grounding_accuracy(pairs)
        attr = attribute_accuracy(pairs)
        if attr is not None:
            metrics["attribute_accuracy"] = attr
        ap = coco_mask_ap([{**p, "category": p["phrase"]} for p in pairs])
        metrics.update(
            {k: v for k, v in ap.items() if k in ("mask_AP", "mask_AP50", "mask_AP75", "mask_AR")}
        )
        metrics["mean_iou"] = matched_instance_iou(pairs)
        metrics["num_pairs"] = len(pairs)
        metrics["num_images"] = len(records)
        return {k: float(v) if isinstance(v, float) else v for k, v in metrics.items()}
