"""SAM3's tracker head for fine-tuning: ``transformers.Sam3TrackerModel`` and its processor.

The tracker is how SAM3 takes points, boxes and masks: a SAM2 prompt encoder and mask decoder
on SAM3's ViT (its ``sam2_convs`` FPN). Its module names are Sam2Model's, so the SAM2 training
module (:class:`~sam_hf.models.sam2_training.Sam2ForTraining`: prompt simulation, correction
clicks, the official SAM2 loss), the freeze flags and the embedding cache train it unchanged;
this module only says how to build it. :func:`build_sam3_tracker` loads what a user names -- a
Hub id (``facebook/sam3``: transformers reads the tracker out of the sam3_video checkpoint), a
``save_pretrained`` folder, an official ``sam3.pt`` (its tracker, converted by
:mod:`sam_hf.convert.sam3`) or a small random config for tests and the CPU demo.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Sam3ImageProcessor,
    Sam3TrackerConfig,
    Sam3TrackerModel,
    Sam3TrackerProcessor,
)

from sam_hf.config import ConfigError
from sam_hf.convert.common import ConversionError, read_official
from sam_hf.convert.sam3 import official_to_hf, released_sam3_config, tracker_state_dict
from sam_hf.convert.sam3_tracker import tracker_config
from sam_hf.models.common import reinit_for_small_widths
from sam_hf.models.freezing import apply_sam2_freezing
from sam_hf.models.loading import (
    load_at_resolution,
    looks_like_path,
    missing_model_error,
    revision_kwargs,
)
from sam_hf.models.sam2 import tie_fourier_features
from sam_hf.models.sam3 import OFFICIAL_SUFFIXES, PRETRAINED_RESOLUTION, tiny_sam3_config

logger = logging.getLogger(__name__)

#: Named small random configs: the SAM3 vision encoder of the same-named SAM3 config (ViT
#: width, layers) under a SAM2 head of the ViT's width (prompt encoder, mask decoder).
SMALL_TRACKER_ARCHS: dict[str, str] = {
    "sam3-tracker-tiny": "sam3-tiny",
    "sam3-tracker-mini": "sam3-mini",
}
TINY_NAMES = tuple(SMALL_TRACKER_ARCHS)
#: The SAM3 ViT's patch size: the token grid is resolution / 14.
PATCH = 14


def check_resolution(resolution: int) -> None:
    if resolution <= 0 or resolution % PATCH:
        raise ConfigError(
            f"resolution {resolution} must be a positive multiple of SAM3's ViT patch size "
            f"{PATCH} (SAM3 was pretrained at {PRETRAINED_RESOLUTION} = 72 x {PATCH})."
        )


def set_tracker_resolution(config: Sam3TrackerConfig, resolution: int) -> Sam3TrackerConfig:
    """The size-dependent fields of ``config`` for ``resolution`` x ``resolution`` input.

    The ViT's RoPE tables, the three feature-map sizes the decoder reshapes to (4x, 2x, 1x the
    token grid) and the prompt encoder's image / mask-prompt sizes all follow the input size;
    they are read when the model is built, so the config is set first. No weight depends on it.
    """
    check_resolution(resolution)
    grid = resolution // PATCH
    vision = config.vision_config
    vision.backbone_config.image_size = resolution
    vision.backbone_feature_sizes = [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2]
    config.prompt_encoder_config.image_size = resolution
    config.prompt_encoder_config.patch_size = PATCH
    return config


def tracker_resolution(config: Sam3TrackerConfig) -> int:
    """The square input size a Sam3TrackerConfig is built for."""
    return int(config.vision_config.backbone_config.image_size)


def tiny_sam3_tracker_config(resolution: int = 224, name: str = "sam3-tracker-tiny"):
    """A small random-init Sam3TrackerConfig by name (:data:`SMALL_TRACKER_ARCHS`).

    The vision encoder is the named SAM3 config's (ViT 32 or 64 wide, all four FPN levels as in
    the real model); the prompt encoder and mask decoder are SAM2's at the FPN width, with the
    MLP 4x as wide and an 8-channel mask-prompt embedding, as ``sam2-mini``.
    """
    vision = tiny_sam3_config(resolution, name=SMALL_TRACKER_ARCHS[name]).vision_config
    width = int(vision.fpn_hidden_size)
    config = Sam3TrackerConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config={"hidden_size": width, "mask_input_channels": 8},
        mask_decoder_config={
            "hidden_size": width,
            "mlp_dim": 4 * width,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": width,
        },
    )
    return set_tracker_resolution(config, resolution)


def build_sam3_tracker_processor(
    resolution: int, image_processor: Sam3ImageProcessor | None = None
) -> Sam3TrackerProcessor:
    """A Sam3TrackerProcessor resizing to ``resolution``, built offline (SAM3's image
    normalisation, mean = std = 0.5, unless ``image_processor`` gives another)."""
    ip = image_processor or Sam3ImageProcessor()
    ip.size = {"height": resolution, "width": resolution}
    return Sam3TrackerProcessor(image_processor=ip, target_size=resolution)


def load_official_sam3_tracker(path: str | Path, resolution: int) -> Sam3TrackerModel:
    """The tracker of an official SAM3 ``.pt`` as a Sam3TrackerModel (every key checked)."""
    official = read_official(path)
    sam3_config = released_sam3_config()
    hf_state, _ = official_to_hf(official, sam3_config)
    config = set_tracker_resolution(tracker_config(sam3_config), resolution)
    state = tracker_state_dict(official, hf_state, config)
    model = Sam3TrackerModel(config)
    model.load_state_dict(state, strict=True)
    return model


def _load_pretrained(source: str, cfg: Any, revision: str | None) -> tuple[Any, Any]:
    """A Hub id or a folder, built for ``cfg.resolution`` (the config first, then weights)."""
    res = getattr(cfg, "resolution", None)
    model, native = load_at_resolution(
        source,
        res,
        revision,
        "sam3_tracker",
        (Sam3TrackerConfig, Sam3TrackerModel),
        (tracker_resolution, set_tracker_resolution),
        why="; its position encodings no longer match what they learned, which fine-tuning "
        "has to recover",
    )
    kwargs = revision_kwargs(revision)
    try:
        processor = Sam3TrackerProcessor.from_pretrained(source, **kwargs)
        processor = build_sam3_tracker_processor(int(res or native), processor.image_processor)
    except (OSError, ValueError, TypeError):
        logger.warning("%s has no processor files; using the default Sam3TrackerProcessor.", source)
        processor = build_sam3_tracker_processor(int(res or native))
    return model, processor


def build_sam3_tracker(cfg: Any) -> tuple[Sam3TrackerModel, Sam3TrackerProcessor]:
    """The Sam3TrackerModel and processor ``cfg`` names, frozen as ``cfg`` says.

    ``cfg.model_name_or_path``: a Hub id (``facebook/sam3``), a ``save_pretrained`` folder
    (a converted ``sam3.pt``'s ``tracker/`` subfolder too), an official ``sam3.pt`` or a
    small config (:data:`TINY_NAMES`). Built for ``cfg.resolution``; the freeze flags are
    SAM2's (``freeze_image_encoder`` / ``freeze_prompt_encoder`` / ``freeze_mask_decoder``).
    """
    name = str(cfg.model_name_or_path or "").strip()
    res = int(getattr(cfg, "resolution", None) or PRETRAINED_RESOLUTION)
    check_resolution(res)
    if name in TINY_NAMES:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(getattr(cfg, "seed", 0)))
            model = Sam3TrackerModel(tiny_sam3_tracker_config(res, name))
            reinit_for_small_widths(model)
            tie_fourier_features(model)
        processor = build_sam3_tracker_processor(res)
    elif Path(name).expanduser().exists() or looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise missing_model_error(
                name, "sam3_tracker", "no such file or folder (not found locally)"
            )
        if path.is_file():
            if path.suffix.lower() not in OFFICIAL_SUFFIXES:
                raise ConfigError(
                    f"{path} is a single file; give the folder that holds config.json and the "
                    "weights, or an official sam3.pt."
                )
            try:
                model = load_official_sam3_tracker(path, res)
            except ConversionError as e:
                raise ConfigError(f"model_name_or_path {e}") from e
            logger.info("Converted the tracker of the official SAM3 checkpoint %s.", path)
            processor = build_sam3_tracker_processor(res)
        else:
            model, processor = _load_pretrained(str(path), cfg, None)
    else:
        if not name:
            raise ConfigError("set model_name_or_path (e.g. facebook/sam3) for the SAM3 tracker.")
        model, processor = _load_pretrained(name, cfg, getattr(cfg, "revision", None))
    apply_sam2_freezing(model, cfg)
    return model, processor
