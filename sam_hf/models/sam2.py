"""SAM2 for fine-tuning: build a ``transformers.Sam2Model`` and its processor from a name.

:func:`build_sam2` loads what a user names -- a Hub id, a sam2.1 ``model_type``, a saved
folder, or the tiny random config ``"sam2-tiny"`` used by tests and the CPU demo -- applies the
freeze flags (:mod:`sam_hf.models.freezing`) and returns the model with a processor that
matches the training resolution. Where the checkpoint comes from (and every way that fails)
is :mod:`sam_hf.models.loading`; the module the trainer optimises around the model is
:class:`sam_hf.models.sam2_training.Sam2ForTraining`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

from sam_hf.config import ConfigError
from sam_hf.config.validate import SAM2_MODEL_TYPES
from sam_hf.convert.common import ConversionError, read_official, save_official
from sam_hf.convert.sam2 import (
    infer_size,
    is_memory_key,
    load_official_sam2,
    model_to_official,
    read_memory,
    write_memory,
)
from sam_hf.models.common import reinit_for_small_widths
from sam_hf.models.freezing import apply_sam2_freezing
from sam_hf.models.loading import (
    load_at_resolution,
    looks_like_path,
    missing_model_error,
    revision_kwargs,
)
from sam_hf.models.lora import merge_to_base

logger = logging.getLogger(__name__)

#: Parameter counts of the sam2.1 model types (``SAM2_MODEL_TYPES``: their Hub ids), for messages.
_SIZES = {
    "sam2.1-hiera-tiny": "39M",
    "sam2.1-hiera-small": "46M",
    "sam2.1-hiera-base-plus": "81M",
    "sam2.1-hiera-large": "224M",
}
#: The guide's SAM1 ViT names and the nearest SAM2 checkpoints.
SAM1_TO_SAM2 = {
    "vit_h": "sam2.1-hiera-large",
    "vit_l": "sam2.1-hiera-base-plus",
    "vit_b": "sam2.1-hiera-small",
}
_SAM1_HUB_IDS = {
    "facebook/sam-vit-huge": "vit_h",
    "facebook/sam-vit-large": "vit_l",
    "facebook/sam-vit-base": "vit_b",
}
#: Suffixes of official (``torch.save``) SAM2 checkpoints, converted on load.
_OFFICIAL_SUFFIXES = (".pt", ".pth", ".ckpt")


# --------------------------------------------------------------------------------------------
# Names, configs, processors
# --------------------------------------------------------------------------------------------


def _sam1_error(name: str, sam1: str) -> ConfigError:
    options = ", ".join(f"{k} ({v} params)" for k, v in _SIZES.items())
    return ConfigError(
        f"{name!r} is a SAM1 (ViT) model; sam_hf fine-tunes SAM2, whose backbones are Hiera. "
        f"The nearest SAM2 checkpoint is model_type: {SAM1_TO_SAM2[sam1]} "
        f"({SAM2_MODEL_TYPES[SAM1_TO_SAM2[sam1]]}); vit_h -> sam2.1-hiera-large, vit_l -> "
        f"sam2.1-hiera-base-plus, vit_b -> sam2.1-hiera-small. All SAM2 choices: {options}."
    )


def canonical_model_type(name: str) -> str:
    """``sam2.1_hiera_b+`` / ``sam2.1-hiera-base-plus`` / ``large`` ... -> the canonical name.

    SAM1 names (``vit_h``, ``vit_l``, ``vit_b``) raise an error naming the SAM2 equivalents.
    """
    raw = str(name).strip()
    key = raw.lower()
    sam1 = key.replace("-", "_").removeprefix("sam_")
    for k in SAM1_TO_SAM2:
        if sam1 == k or sam1.startswith(k + "_"):
            raise _sam1_error(raw, k)
    key = key.replace("_", "-").replace("b+", "base-plus").replace("facebook/", "")
    short = {"t": "tiny", "s": "small", "b": "base-plus", "l": "large"}
    for prefix in ("sam2.1-hiera-", "hiera-", ""):
        if key.startswith(prefix):
            rest = short.get(key[len(prefix) :], key[len(prefix) :])
            cand = f"sam2.1-hiera-{rest}"
            if cand in SAM2_MODEL_TYPES:
                return cand
    raise ConfigError(f"model_type {raw!r} is unknown; choose one of {sorted(SAM2_MODEL_TYPES)}.")


#: Widths of the named small configs: Hiera stage widths and blocks, global-attention block,
#: and the FPN / prompt encoder / mask decoder width (the mask decoder's MLP is 4x as wide,
#: except the tests' tiny one). ``sam2-tiny`` is for tests; the ``mini`` ones are the sizes the
#: shipped demo checkpoints are pretrained at (scripts/build_demo_checkpoints.py).
SMALL_SAM2_ARCHS: dict[str, dict[str, Any]] = {
    "sam2-tiny": {"dims": [16, 32, 64, 128], "blocks": [1, 1, 2, 1], "glob": [3], "width": 32},
    "sam2-mini": {"dims": [24, 48, 96, 192], "blocks": [1, 2, 3, 1], "glob": [4], "width": 64},
    "sam2-mini-wide": {
        "dims": [32, 64, 128, 256],
        "blocks": [1, 1, 3, 1],
        "glob": [4],
        "width": 128,
    },
}
#: Named small configs (random weights, for tests and the CPU demo's pretraining).
TINY_NAMES = tuple(SMALL_SAM2_ARCHS)


def tiny_sam2_config(resolution: int = 256, name: str = "sam2-tiny") -> Sam2Config:
    """A small random-init Sam2Config by name (``SMALL_SAM2_ARCHS``); ``sam2-tiny`` is ~0.35 M.

    ``sam2-tiny`` (tests): Hiera with stages [1, 1, 2, 1] of widths [16, 32, 64, 128], global
    attention in the last block of stage 3 (as the real hiera-tiny's global blocks sit in stage
    3), FPN, prompt encoder and mask decoder width 32. ``sam2-mini`` (~1 M) and
    ``sam2-mini-wide`` (~2.2 M) are wider: the mask decoder's upscaled embedding has width / 8
    channels, which at 32 leaves 4 channels for a whole mask.
    """
    arch = SMALL_SAM2_ARCHS[name]
    dims, width = arch["dims"], arch["width"]
    cfg = Sam2Config(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": dims[0],
                "blocks_per_stage": arch["blocks"],
                "embed_dim_per_stage": dims,
                "num_attention_heads_per_stage": [1, 2, 4, 8],
                "window_size_per_stage": [8, 4, 8, 4],
                "global_attention_blocks": arch["glob"],
            },
            "backbone_channel_list": dims[::-1],
            "fpn_hidden_size": width,
        },
        prompt_encoder_config={
            "model_type": "sam2_prompt_encoder",
            "hidden_size": width,
            "mask_input_channels": 8,
        },
        mask_decoder_config={
            "model_type": "sam2_mask_decoder",
            "hidden_size": width,
            "mlp_dim": 64 if name == "sam2-tiny" else 4 * width,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": width,
        },
    )
    return set_sam2_resolution(cfg, resolution)


def sam2_resolution(config: Sam2Config) -> int:
    """The square input size a Sam2Config is built for."""
    size = config.vision_config.backbone_config.image_size
    return int(size[0] if isinstance(size, list | tuple) else size)


def set_sam2_resolution(config: Sam2Config, resolution: int) -> Sam2Config:
    """Rebuild the size-dependent fields of ``config`` for ``resolution`` x ``resolution`` input.

    No weight depends on the input size (Hiera interpolates its background position embedding),
    so a checkpoint trained at 1024 loads at e.g. 512 -- a quarter of the compute, at some cost
    in accuracy that the fine-tune then adapts to.
    """
    r = int(resolution)
    if r <= 0 or r % 32:
        raise ValueError(
            f"resolution {r} must be a positive multiple of 32 (Hiera downsamples the input 32x); "
            "SAM2 checkpoints were trained at 1024."
        )
    bb = config.vision_config.backbone_config
    stride = bb.patch_stride[0] if isinstance(bb.patch_stride, list | tuple) else bb.patch_stride
    bb.image_size = [r, r]
    n = len(config.vision_config.backbone_feature_sizes)
    config.vision_config.backbone_feature_sizes = [[r // (stride * 2**i)] * 2 for i in range(n)]
    config.prompt_encoder_config.image_size = r
    return config


def build_sam2_processor(
    resolution: int,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
) -> Sam2Processor:
    """A Sam2Processor for ``resolution`` x ``resolution`` input, built offline.

    (``Sam2ImageProcessorFast`` is the deprecated alias of ``Sam2ImageProcessor`` in
    transformers 5.)
    """
    kwargs: dict[str, Any] = {
        "size": {"height": resolution, "width": resolution},
        "mask_size": {"height": resolution // 4, "width": resolution // 4},
    }
    if image_mean is not None:
        kwargs["image_mean"] = list(image_mean)
    if image_std is not None:
        kwargs["image_std"] = list(image_std)
    return Sam2Processor(image_processor=Sam2ImageProcessor(**kwargs), target_size=resolution)


def tie_fourier_features(model: Sam2Model) -> None:
    """Give the prompt encoder the image's random Fourier matrix, as real checkpoints have.

    A fresh Sam2Model draws two independent Gaussian matrices for the image-wide positional
    encoding and for encoding prompt coordinates; in the released checkpoints (and the
    official code) they are one matrix, which is what lets a point's encoding match the image
    location it falls on. Untied, a randomly initialised model learns to ignore its prompts.
    """
    with torch.no_grad():
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding
        )


def _load_official(path: Path, cfg: Any, model_type: str | None) -> Sam2Model:
    """An official SAM2 / SAM2.1 ``.pt`` converted in memory (every key checked; the size from
    the tensors, or ``model_type``) and built for ``cfg.resolution``."""
    res = getattr(cfg, "resolution", None)
    try:
        model, _ = load_official_sam2(path, model_type, res)
    except ConversionError as e:
        raise ConfigError(f"model_name_or_path {e}") from e
    logger.info("Converted the official SAM2 checkpoint %s (memory modules kept aside).", path)
    return model


def official_memory(cfg: Any) -> dict[str, torch.Tensor] | None:
    """The official memory modules of ``cfg.model_name_or_path``: from an official ``.pt``, or
    a converted folder's ``official_extra.safetensors``; None for other sources."""
    path = Path(str(cfg.model_name_or_path or "")).expanduser()
    if path.is_file() and path.suffix.lower() in _OFFICIAL_SUFFIXES:
        return {k: v for k, v in read_official(path).items() if is_memory_key(k)}
    return read_memory(path) if path.is_dir() else None


def check_export_official(cfg: Any) -> None:
    """``export_official`` needs the memory modules of an official checkpoint: refused before
    training when ``model_name_or_path`` cannot give them."""
    if getattr(cfg, "export_official", False) and official_memory(cfg) is None:
        raise ConfigError(
            f"export_official: model_name_or_path {cfg.model_name_or_path!r} holds no official "
            "SAM2 memory modules, which the official .pt needs. Start from an official .pt (or "
            "a folder converted by scripts/convert_checkpoint.py), or set export_official false "
            "and convert final/ later with --memory_from <official .pt of the same size>."
        )


def export_official(model: torch.nn.Module, cfg: Any, path: Path) -> Path:
    """``model`` (merged if it carries LoRA adapters) as an official ``{"model": ...}`` .pt,
    with the memory modules of ``cfg.model_name_or_path`` (also written beside it as
    ``official_extra.safetensors``, so the folder converts again with convert_checkpoint.py)."""
    memory = official_memory(cfg)
    if memory is None:
        check_export_official(cfg)
    if hasattr(model, "merge_and_unload"):
        model = merge_to_base(model, copy_model=True)
    state = model_to_official(model, memory)
    write_memory(memory, path.parent, infer_size(state) or "unknown")
    return save_official(state, path)


def _load_pretrained(
    source: str, cfg: Any, revision: str | None
) -> tuple[Sam2Model, Sam2Processor]:
    """A Hub id or a folder, built for ``cfg.resolution`` (the config first, then weights)."""
    res = getattr(cfg, "resolution", None)
    model, native = load_at_resolution(
        source,
        res,
        revision,
        "sam2",
        (Sam2Config, Sam2Model),
        (sam2_resolution, set_sam2_resolution),
    )
    res = int(res or native)
    kwargs = revision_kwargs(revision)
    try:
        processor = Sam2Processor.from_pretrained(source, **kwargs)
        if res != native:
            ip = processor.image_processor
            processor = build_sam2_processor(res, ip.image_mean, ip.image_std)
    except OSError:
        logger.warning("%s has no processor files; using the default Sam2Processor.", source)
        processor = build_sam2_processor(res)
    return model, processor


def build_sam2(cfg: Any) -> tuple[Sam2Model, Sam2Processor]:
    """The Sam2Model and Sam2Processor that ``cfg`` names, frozen as ``cfg`` says.

    ``cfg.model_name_or_path`` may be a Hub id (``facebook/sam2.1-hiera-large``), a local
    folder written by ``save_pretrained``, an official SAM2 / SAM2.1 ``.pt`` (converted on
    load by :mod:`sam_hf.convert.sam2`; ``model_type`` names its size if the tensors cannot)
    or ``"sam2-tiny"``. ``cfg.model_type`` (a sam2.1
    name) selects a Hub checkpoint instead of a Hub id in ``model_name_or_path``. The model is
    built for ``cfg.resolution`` and the processor resizes to it.
    """
    name = str(cfg.model_name_or_path or "").strip()
    model_type = getattr(cfg, "model_type", None)
    hub_from_type = SAM2_MODEL_TYPES[canonical_model_type(model_type)] if model_type else None
    low = name.lower()
    if low in _SAM1_HUB_IDS:
        raise _sam1_error(name, _SAM1_HUB_IDS[low])
    for k in SAM1_TO_SAM2:
        if low == k or low.startswith(f"sam_{k}"):
            raise _sam1_error(name, k)

    is_local = bool(name) and (Path(name).expanduser().exists() or looks_like_path(name))
    is_official = is_local and Path(name).suffix.lower() in _OFFICIAL_SUFFIXES
    if hub_from_type and (name in TINY_NAMES or is_local) and not is_official:
        logger.warning(
            "model_type %s is not used: model_name_or_path %s names the model itself.",
            model_type,
            name,
        )

    if name in TINY_NAMES:
        res = int(getattr(cfg, "resolution", None) or 256)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(getattr(cfg, "seed", 0)))
            model = Sam2Model(tiny_sam2_config(res, name))
            reinit_for_small_widths(model)
            tie_fourier_features(model)
        processor = build_sam2_processor(res)
    elif is_local:
        path = Path(name).expanduser()
        if not path.exists():
            raise missing_model_error(name, "sam2", "no such file or folder (not found locally)")
        if path.is_file():
            if path.suffix.lower() not in _OFFICIAL_SUFFIXES:
                raise ConfigError(
                    f"{path} is a single file; give the folder that holds config.json and the "
                    "weights, or an official SAM2 .pt."
                )
            model = _load_official(path, cfg, model_type)
            processor = build_sam2_processor(sam2_resolution(model.config))
        else:
            model, processor = _load_pretrained(str(path), cfg, None)
    else:
        source = hub_from_type or name
        if not source:
            raise ConfigError("set model_name_or_path (or model_type) to choose a SAM2 checkpoint.")
        if hub_from_type and name and name != hub_from_type:
            logger.info(
                "model_type %s selects %s (model_name_or_path %s is not used).",
                model_type,
                hub_from_type,
                name,
            )
        model, processor = _load_pretrained(source, cfg, getattr(cfg, "revision", None))
    check_export_official(cfg)
    apply_sam2_freezing(model, cfg)
    return model, processor
