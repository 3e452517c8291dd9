"""SAM3 (text-concept segmentation) for fine-tuning: build, freeze, train and predict.

``build_sam3(cfg)`` returns a plain transformers ``Sam3Model`` + ``Sam3Processor`` -- from the
Hub (``facebook/sam3``, gated), a local folder (e.g. an earlier fine-tune's ``final/``), or the
tiny random config ``sam3-tiny`` used by tests and CPU demos -- so whatever is trained saves with
``save_pretrained`` and reloads with ``Sam3Model.from_pretrained`` / ``Sam3Processor.from_pretrained``.

``Sam3ForTraining`` wraps the model for the trainer. Each image is encoded once by the ViT and
that encoding serves all of the image's text queries (the vision outputs are indexed per
query), because the ViT is by far the most expensive part: at 1008 px it is ~45 s of the
forward on a CPU, while the DETR/mask heads for one more phrase are cheap.

Only the image detector is trained. SAM3's tracker (the SAM2-style memory model that propagates
masks through video) is not part of ``Sam3Model`` at all -- its weights are dropped on load --
so ``freeze_tracker`` exists only to say so and must stay true.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Sam3Config, Sam3Model, Sam3Processor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor
from transformers.models.sam3.modeling_sam3 import (
    Sam3VisionEncoderOutput,
    box_cxcywh_to_xyxy,
    inverse_sigmoid,
)

from sam_hf.config import ConfigError
from sam_hf.convert.common import ConversionError
from sam_hf.convert.sam3 import load_official_sam3
from sam_hf.data.tokenizer import SAM3_CONTEXT_LENGTH, build_clip_tokenizer
from sam_hf.losses.sam3 import Sam3Loss
from sam_hf.models.common import enable_activation_checkpointing, reinit_for_small_widths
from sam_hf.models.freezing import (
    apply_sam3_freezing,
    check_encoder_frozen,
    check_freeze_tracker,
    check_text_encoder_frozen,
    encoder_is_trainable,
    text_encoder_is_trainable,
)
from sam_hf.models.loading import (
    load_error,
    looks_like_path,
    missing_model_error,
    read_model_config,
)

logger = logging.getLogger(__name__)

#: Named small configs (random weights): ``sam3-tiny`` for tests, ``sam3-mini`` the size the
#: shipped demo checkpoint is pretrained at. Value: (width of everything but the CLIP text
#: encoder, ViT layers, DETR decoder layers). The text encoder stays 32 wide in both: its
#: 49,408-token embedding is most of the parameters (6.3 MB at width 32).
SMALL_SAM3_ARCHS: dict[str, tuple[int, int, int]] = {
    "sam3-tiny": (32, 2, 2),
    "sam3-mini": (64, 4, 3),
}
TINY_NAMES = tuple(SMALL_SAM3_ARCHS)
#: The size SAM3 was pretrained at (72 x 72 ViT tokens of 14 px).
PRETRAINED_RESOLUTION = 1008
#: Predictions scoring below this are not returned by ``predict`` (they cannot count for the
#: 0.5-threshold metrics, and barely move mask AP), which keeps full-resolution masks small.
PREDICT_MIN_SCORE = 0.05


def tiny_sam3_config(
    resolution: int = 224, num_queries: int = 20, name: str = "sam3-tiny"
) -> Sam3Config:
    """A small Sam3Config by name (``SMALL_SAM3_ARCHS``); ``sam3-tiny`` is ~1.8 M parameters
    (ViT 32 wide, 2 layers; CLIP text 32 wide; heads 32 wide), ``sam3-mini`` ~2.8 M.

    Shaped like transformers' own SAM3 test config, with the real CLIP vocabulary (49,408
    tokens, most of the parameters) so the real tokenizer works, all four FPN levels (so
    ``pred_masks`` come out at 4x the token grid as in the full model) and dropout off so
    tiny overfitting checks are deterministic. Nested sub-config dicts need ``model_type``.
    """
    width, vit_layers, decoder_layers = SMALL_SAM3_ARCHS[name]
    return Sam3Config(
        vision_config={
            "model_type": "sam3_vision_model",
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": width,
                "intermediate_size": 2 * width,
                "num_hidden_layers": vit_layers,
                "num_attention_heads": 4,
                "image_size": resolution,
                "pretrain_image_size": resolution,
                "patch_size": 14,
                "window_size": 8,
                # every layer global at 2 layers; every second one (windowed between) beyond
                "global_attn_indexes": (
                    list(range(vit_layers)) if vit_layers <= 2 else list(range(1, vit_layers, 2))
                ),
            },
            "fpn_hidden_size": width,
            "scale_factors": [4.0, 2.0, 1.0, 0.5],
        },
        text_config={
            "model_type": "clip_text_model",
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": SAM3_CONTEXT_LENGTH,
            "hidden_act": "gelu",
        },
        geometry_encoder_config={
            "model_type": "sam3_geometry_encoder",
            "hidden_size": width,
            "num_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 2 * width,
            "dropout": 0.0,
        },
        detr_encoder_config={
            "model_type": "sam3_detr_encoder",
            "hidden_size": width,
            "num_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 2 * width,
            "dropout": 0.0,
        },
        detr_decoder_config={
            "model_type": "sam3_detr_decoder",
            "hidden_size": width,
            "num_layers": decoder_layers,
            "num_queries": num_queries,
            "num_attention_heads": 4,
            "intermediate_size": 2 * width,
            "dropout": 0.0,
        },
        mask_decoder_config={
            "model_type": "sam3_mask_decoder",
            "hidden_size": width,
            "num_upsampling_stages": 3,
            "num_attention_heads": 4,
        },
    )


def build_sam3_processor(resolution: int, tokenizer: Any | None = None) -> Sam3Processor:
    """A Sam3Processor at ``resolution`` with the offline CLIP tokenizer (mean = std = 0.5)."""
    image_processor = Sam3ImageProcessor(size={"height": resolution, "width": resolution})
    tok = tokenizer if tokenizer is not None else build_clip_tokenizer()
    return Sam3Processor(image_processor=image_processor, tokenizer=tok, target_size=resolution)


def _check_resolution(resolution: int, patch: int = 14) -> None:
    if resolution <= 0 or resolution % patch:
        raise ValueError(
            f"resolution {resolution} must be a positive multiple of SAM3's ViT patch size "
            f"{patch} (SAM3 was pretrained at {PRETRAINED_RESOLUTION} = 72 x {patch})."
        )


def set_sam3_resolution(model: Sam3Model, processor: Sam3Processor | None, resolution: int) -> None:
    """Run ``model`` (and resize inputs in ``processor``) at ``resolution`` x ``resolution``.

    The ViT's global-attention layers precompute RoPE positions from ``image_size``; they are
    recomputed here, and the new size is written into the configs so ``save_pretrained`` /
    ``from_pretrained`` keep it. Absolute position embeddings are tiled by the model itself.
    """
    backbone = model.vision_encoder.backbone
    patch = backbone.config.patch_size
    _check_resolution(resolution, patch if isinstance(patch, int) else patch[0])
    configs = {
        id(c): c
        for c in (
            model.config.vision_config.backbone_config,
            model.vision_encoder.config.backbone_config,
            backbone.config,
            *(layer.config for layer in backbone.layers),
        )
    }
    for c in configs.values():
        c.image_size = resolution
    for layer in backbone.layers:
        pos = layer.precompute_positions(layer.config, layer.window_size)
        layer.register_buffer("position_ids", pos.to(layer.position_ids.device), persistent=False)
    if processor is not None:
        processor.image_processor.size = {"height": resolution, "width": resolution}
        processor.target_size = resolution


#: Suffixes of official (``torch.save``) SAM3 checkpoints, converted on load.
OFFICIAL_SUFFIXES = (".pt", ".pth", ".ckpt")


def build_sam3(cfg: Any) -> tuple[Sam3Model, Sam3Processor]:
    """Sam3Model + Sam3Processor from ``cfg.model_name_or_path`` with the freeze policy applied.

    Reads ``model_name_or_path``, ``revision``, ``resolution`` (default 1008), ``seed``,
    ``freeze_vision_encoder``, ``freeze_text_encoder``, ``freeze_tracker`` (must be true) and
    ``gradient_checkpointing``.
    """
    check_freeze_tracker(cfg)
    name = str(getattr(cfg, "model_name_or_path", "facebook/sam3"))
    resolution = int(getattr(cfg, "resolution", PRETRAINED_RESOLUTION))
    _check_resolution(resolution)
    if name in TINY_NAMES:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(getattr(cfg, "seed", 0)))
            model = Sam3Model(tiny_sam3_config(resolution, name=name))
            reinit_for_small_widths(model)
        processor = build_sam3_processor(resolution)
    else:
        model, processor = _load_pretrained(name, getattr(cfg, "revision", None) or "main")
        # the size the weights were trained at: every run saves its resolution in config.json
        # (set_sam3_resolution), so a 112 px demo checkpoint is compared with 112, not 1008
        saved = int(model.config.vision_config.backbone_config.image_size)
        if resolution != saved:
            logger.warning(
                "Running SAM3 at %d px instead of the %d px %s was trained at (its saved "
                "config): its position encodings and feature scales no longer match what the "
                "weights learned, which degrades pretrained accuracy (fine-tuning has to recover "
                "it).",
                resolution,
                saved,
                name,
            )
        if resolution != saved or processor.image_processor.size.get("height") != resolution:
            set_sam3_resolution(model, processor, resolution)
    apply_sam3_freezing(model, cfg)
    if getattr(cfg, "gradient_checkpointing", False):
        enable_activation_checkpointing(model)
    return model, processor


def _load_pretrained(name: str, revision: str) -> tuple[Sam3Model, Sam3Processor]:
    """Weights from an official ``.pt``, a ``save_pretrained`` folder or a Hub id."""
    path = Path(name).expanduser()
    is_local = path.exists() or looks_like_path(name)
    if is_local:
        if not path.exists():
            raise missing_model_error(name, "sam3", "no such file or folder (not found locally)")
        if path.is_file() and path.suffix.lower() in OFFICIAL_SUFFIXES:
            try:
                model = load_official_sam3(path).train()
            except ConversionError as e:
                raise ConfigError(f"model_name_or_path {e}") from e
            logger.info("Converted the official SAM3 checkpoint %s (tracker left aside).", path)
            return model, build_sam3_processor(PRETRAINED_RESOLUTION)
        if path.is_file():
            raise ConfigError(
                f"{path} is a single file; SAM3 loads from an official .pt, the folder that "
                "holds config.json and the weights (save_pretrained output), a Hub id, or "
                "sam3-tiny."
            )
        name = str(path)
    kw = {} if is_local else {"revision": revision}
    # config.json first (one small file): a missing model, an offline Hub or a SAM2
    # checkpoint fails here in one line, before any weights are read.
    read_model_config(name, None if is_local else revision, "sam3")
    try:
        model = Sam3Model.from_pretrained(name, **kw)
    except OSError as e:
        raise load_error(name, "sam3", e) from e
    try:
        processor = Sam3Processor.from_pretrained(name, **kw)
    except (OSError, ValueError, TypeError) as e:
        if not is_local:
            if isinstance(e, OSError):
                raise load_error(name, "sam3", e) from e
            raise
        logger.warning(
            "No loadable Sam3Processor in %s (%s); building one with the offline CLIP tokenizer.",
            name,
            e,
        )
        processor = build_sam3_processor(model.config.vision_config.backbone_config.image_size)
    return model, processor


def index_vision_outputs(
    vision: Sam3VisionEncoderOutput, index: torch.Tensor
) -> Sam3VisionEncoderOutput:
    """Repeat one encoding per image into one per query (``index``: query -> image)."""
    last = vision.last_hidden_state
    return Sam3VisionEncoderOutput(
        last_hidden_state=None if last is None else last[index],
        fpn_hidden_states=tuple(f[index] for f in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(p[index] for p in vision.fpn_position_encoding),
    )


@contextmanager
def decoder_layer_capture(model: Sam3Model, enabled: bool = True) -> Iterator[dict[str, Any]]:
    """Keep, during the ``Sam3Model`` forwards inside the block, what the model computes for
    every DETR decoder layer but returns for the last only: the decoder's output (per-layer
    presence logits and input reference boxes), the scoring head's logits of all layers and
    the box head's offsets of all layers (its one call on the stacked layers). Read them with
    :func:`decoder_layer_outputs`. Forward hooks: the tensors are the model's own, in its
    autograd graph. An empty dict when not ``enabled``."""
    store: dict[str, Any] = {}
    if not enabled:
        yield store
        return

    def keep(name: str, stacked_only: bool = False) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if not stacked_only or output.dim() == 4:  # box_head also runs once per layer
                store[name] = output

        return hook

    decoder = model.detr_decoder
    handles = [
        decoder.register_forward_hook(keep("decoder")),
        model.dot_product_scoring.register_forward_hook(keep("logits")),
        decoder.box_head.register_forward_hook(keep("box_offsets", stacked_only=True)),
    ]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def decoder_layer_outputs(store: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """Per DETR decoder layer, last included: ``pred_logits`` (Q, P), ``pred_boxes`` (Q, P, 4)
    normalised xyxy and ``presence_logits`` (Q, 1), computed as ``Sam3Model.forward`` computes
    the last layer's (same heads, same box refinement) from :func:`decoder_layer_capture`."""
    dec = store["decoder"]
    cxcywh = (inverse_sigmoid(dec.reference_boxes) + store["box_offsets"]).sigmoid()
    boxes = box_cxcywh_to_xyxy(cxcywh)
    logits = store["logits"].squeeze(-1)
    return [
        {
            "pred_logits": logits[i],
            "pred_boxes": boxes[i],
            "presence_logits": dec.presence_logits[i],
        }
        for i in range(logits.shape[0])
    ]


class Sam3ForTraining(nn.Module):
    """The trainer's view of SAM3: ``forward(batch)`` -> loss, ``predict(batch)`` -> pairs.

    ``batch`` comes from :class:`sam_hf.data.queries.Sam3Collator`.
    """

    def __init__(self, model: Sam3Model, args: Any) -> None:
        super().__init__()
        self.model = model
        self.args = args
        self.criterion = Sam3Loss.from_args(args)
        #: Cached phrase features (:class:`sam_hf.features.store.PhraseFeatures`), set by the task when
        #: the text encoder is frozen; None = run the text encoder on every batch.
        self.text_cache: Any = None

    def encoder_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The ViT + FPN maps of a batch of images: what the embedding cache stores per image."""
        return list(self.model.get_vision_features(pixel_values=pixel_values).fpn_hidden_states)

    def vision_features(self, batch: dict[str, Any]) -> Sam3VisionEncoderOutput:
        """The per-image encoding: from the batch's cached FPN maps (``image_embeddings``, see
        :mod:`sam_hf.features`) when it carries them, else by running the ViT -- without autograd
        when it is frozen (a LoRA adapter inside makes it require grad again)."""
        m = self.model
        cached = batch.get("image_embeddings")
        if cached is not None:
            check_encoder_frozen(m)
            pe = m.vision_encoder.neck.position_encoding
            levels = tuple(cached)
            return Sam3VisionEncoderOutput(
                last_hidden_state=None,  # Sam3Model's heads read only the FPN maps
                fpn_hidden_states=levels,
                fpn_position_encoding=tuple(pe(f.shape, f.device, f.dtype) for f in levels),
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and encoder_is_trainable(m)):
            return m.get_vision_features(pixel_values=batch["pixel_values"])

    def text_features(self, batch: dict[str, Any]) -> BaseModelOutputWithPooling:
        """Per-query phrase features (``pooler_output`` (Q, L, D)): looked up in the phrase
        cache when the task attached one, else computed by the text encoder (without autograd
        when it is frozen)."""
        m = self.model
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.text_cache is not None:
            check_text_encoder_frozen(m)

            def compute(rows: list[int]) -> torch.Tensor:
                idx = torch.tensor(rows, device=ids.device)
                return m.get_text_features(
                    input_ids=ids[idx], attention_mask=mask[idx]
                ).pooler_output

            feats = self.text_cache(batch["phrases"], mask.cpu(), compute)
            return BaseModelOutputWithPooling(pooler_output=feats.to(ids.device))
        with torch.set_grad_enabled(torch.is_grad_enabled() and text_encoder_is_trainable(m)):
            return m.get_text_features(input_ids=ids, attention_mask=mask)

    def run(self, batch: dict[str, Any]) -> tuple[Any, Sam3VisionEncoderOutput]:
        """SAM3 outputs per query (Q rows), encoding each image once; also the per-image encoding.

        Frozen encoders run without autograd (no activations kept), or not at all when their
        features come from the embedding cache.
        """
        m = self.model
        vision = self.vision_features(batch)
        index = batch["query_image"].to(vision.fpn_hidden_states[0].device)
        if index.numel() == 0:
            return None, vision
        outputs = m(
            vision_embeds=index_vision_outputs(vision, index),
            text_embeds=self.text_features(batch),
            attention_mask=batch["attention_mask"],
        )
        return outputs, vision

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``{"loss": scalar with grad, "terms": {name: detached scalar}, "num_queries": int}``."""
        # the intermediate decoder layers' outputs, for the auxiliary loss terms
        with decoder_layer_capture(self.model, enabled=self.criterion.cfg.aux_loss) as store:
            outputs, vision = self.run(batch)
        if outputs is None:
            # No query in this batch (no phrase and no known-absent phrase): a zero loss that
            # still touches every trainable parameter, so backward() and DDP behave even when
            # the features came without autograd (frozen or cached encoder).
            zero = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
            zero = zero + vision.fpn_hidden_states[-1].sum() * 0.0
            self.criterion.skip_step(zero.device)
            return {"loss": zero, "terms": {}, "num_queries": 0}
        loss, terms = self.criterion(
            outputs.pred_logits,
            outputs.pred_boxes,
            outputs.pred_masks,
            outputs.presence_logits,
            batch["target_boxes"],
            batch["target_masks"],
            batch["num_targets"],
            batch.get("is_attribute"),
            aux_outputs=decoder_layer_outputs(store)[:-1] if store else None,
        )
        return {"loss": loss, "terms": terms, "num_queries": int(batch["num_targets"].shape[0])}

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Per image ``{"image_id", "pairs": [...]}`` at ORIGINAL resolution (CPU tensors).

        One pair per query: ``{"phrase", "gt": bool (G, H, W), "pred": bool (P, H, W),
        "scores": (P,), "is_negative"}`` plus ``"candidates"`` (bool (C, H, W) masks of the
        instances of the phrase's category) and ``"candidate_labels"`` (bool (C,): whether the
        phrase describes each) for attribute phrases. Score = sigmoid(pred_logits) x
        sigmoid(presence_logits); masks are ``pred_masks`` logits resized straight to (H, W)
        (the input was a squash resize) and thresholded at 0; predictions scoring below
        ``PREDICT_MIN_SCORE`` are dropped, the rest sorted by score.
        """
        outputs, _ = self.run(batch)
        n_img = batch["pixel_values"].shape[0]
        results = [{"image_id": batch["image_ids"][b], "pairs": []} for b in range(n_img)]
        if outputs is None:
            return results
        min_score = min(PREDICT_MIN_SCORE, float(getattr(self.args, "score_threshold", 0.5)))
        scores_all = (
            outputs.pred_logits.float().sigmoid()
            * outputs.presence_logits.float().sigmoid().reshape(-1, 1)
        )
        for q, b in enumerate(batch["query_image"].tolist()):
            h, w = batch["orig_sizes"][b]
            scores = scores_all[q]
            keep = (scores >= min_score).nonzero().flatten()
            keep = keep[scores[keep].argsort(descending=True)]
            logits = outputs.pred_masks[q, keep].float()
            pred = torch.zeros((len(keep), h, w), dtype=torch.bool)
            for s in range(0, len(keep), 16):  # bounded memory for large originals
                up = F.interpolate(
                    logits[None, s : s + 16], size=(h, w), mode="bilinear", align_corners=False
                )
                pred[s : s + 16] = (up[0] > 0).cpu()
            orig = batch["orig_masks"][b]
            pair = {
                "phrase": batch["phrases"][q],
                "gt": orig[batch["query_targets"][q].to(orig.device)].bool().cpu(),
                "pred": pred,
                "scores": scores[keep].cpu(),
                "is_negative": bool(batch["is_negative"][q]),
            }
            cands = batch.get("candidates", [None] * (q + 1))[q]
            if cands is not None:
                pair["candidates"] = orig[cands.to(orig.device)].bool().cpu()
                pair["candidate_labels"] = batch["candidate_labels"][q].bool().cpu()
            results[b]["pairs"].append(pair)
        return results
