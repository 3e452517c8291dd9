"""SAM2 for fine-tuning: build a ``transformers.Sam2Model``, wrap it with prompts and the loss.

:func:`build_sam2` loads what a user names -- a Hub id, a sam2.1 ``model_type``, a saved
folder, or the tiny random config ``"sam2-tiny"`` used by tests and the CPU demo -- applies the
freeze flags and returns the model with a processor that matches the training resolution.
:class:`Sam2ForTraining` is the module the trainer optimises: it encodes each image once, runs
the prompt encoder and mask decoder for every object (and every correction click), and returns
the official SAM2 loss (:mod:`sam_hf.losses.sam2`). ``wrapper.model`` stays a plain
``Sam2Model``, so ``save_pretrained`` output loads with transformers alone.

Which mask is predicted (training, validation loss and :meth:`Sam2ForTraining.predict` alike):
with ``multimask_output`` and a single-point prompt the decoder returns 3 masks (the loss
trains the best one; prediction takes the one with the highest predicted IoU); for boxes,
several points, mask prompts and correction steps it returns its single-mask output (as the
official ``multimask_max_pt_num: 1``). Sam2Model's mask decoder has one mode-dependent
behaviour, ``dynamic_multimask_via_stability``: in ``eval()`` a single-mask call may silently
swap in the best multimask output when the single mask is "unstable". The wrapper switches it
off for its own calls, so a prediction is the same mask in train and eval mode and is exactly
the output the loss trained. The saved config keeps the flag, so users calling the exported
model directly get transformers' usual behaviour.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub import hf_hub_download
from torch import nn
from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

from sam_hf.config.args import MODEL_SOURCES, ConfigError, check_checkpoint_family, check_model_name
from sam_hf.data.prompts import make_generator, sample_correction_clicks
from sam_hf.features.cache import check_encoder_frozen, encoder_is_trainable
from sam_hf.losses.sam2 import Sam2Loss
from sam_hf.models.common import (
    enable_activation_checkpointing,
    reinit_for_small_widths,
    set_requires_grad,
)

logger = logging.getLogger(__name__)

#: sam2.1 model types and the Hub checkpoints they name (parameter counts for messages).
SAM2_HUB_IDS = {
    "sam2.1-hiera-tiny": "facebook/sam2.1-hiera-tiny",
    "sam2.1-hiera-small": "facebook/sam2.1-hiera-small",
    "sam2.1-hiera-base-plus": "facebook/sam2.1-hiera-base-plus",
    "sam2.1-hiera-large": "facebook/sam2.1-hiera-large",
}
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
#: Named tiny configs (random weights, for tests and the CPU demo).
TINY_NAMES = ("sam2-tiny",)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
#: Objects decoded at once by ``predict`` (bounds memory on images with 100+ objects).
PREDICT_CHUNK = 32


# --------------------------------------------------------------------------------------------
# Names, configs, processors
# --------------------------------------------------------------------------------------------


def _sam1_error(name: str, sam1: str) -> ConfigError:
    options = ", ".join(f"{k} ({v} params)" for k, v in _SIZES.items())
    return ConfigError(
        f"{name!r} is a SAM1 (ViT) model; sam_hf fine-tunes SAM2, whose backbones are Hiera. "
        f"The nearest SAM2 checkpoint is model_type: {SAM1_TO_SAM2[sam1]} "
        f"({SAM2_HUB_IDS[SAM1_TO_SAM2[sam1]]}); vit_h -> sam2.1-hiera-large, vit_l -> "
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
            if cand in SAM2_HUB_IDS:
                return cand
    raise ConfigError(f"model_type {raw!r} is unknown; choose one of {sorted(SAM2_HUB_IDS)}.")


def tiny_sam2_config(resolution: int = 256) -> Sam2Config:
    """A ~0.35 M-parameter Sam2Config for tests and CPU demos (shapes as transformers' tests).

    Hiera with hidden 16, stages [1, 1, 2, 1] of widths [16, 32, 64, 128] (global attention in
    the last block of stage 3, like the real hiera-tiny's global blocks sit in stage 3), FPN
    width 32, prompt encoder and mask decoder width 32.
    """
    cfg = Sam2Config(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 16,
                "blocks_per_stage": [1, 1, 2, 1],
                "embed_dim_per_stage": [16, 32, 64, 128],
                "num_attention_heads_per_stage": [1, 2, 4, 8],
                "window_size_per_stage": [8, 4, 8, 4],
                "global_attention_blocks": [3],
            },
            "backbone_channel_list": [128, 64, 32, 16],
            "fpn_hidden_size": 32,
        },
        prompt_encoder_config={
            "model_type": "sam2_prompt_encoder",
            "hidden_size": 32,
            "mask_input_channels": 8,
        },
        mask_decoder_config={
            "model_type": "sam2_mask_decoder",
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": 32,
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


def apply_freeze(model: Sam2Model, cfg: Any) -> None:
    """``freeze_image_encoder`` / ``freeze_prompt_encoder`` / ``freeze_mask_decoder``.

    The image encoder includes ``no_memory_embedding`` (a learned offset added to the image
    embedding), so a frozen encoder gives fixed image embeddings. ``mask_decoder.conv_s0/s1``
    (applied to the high-resolution features) belong to the mask decoder, as in the module tree.
    """
    if cfg.freeze_image_encoder:
        set_requires_grad(model.vision_encoder, False)
        model.no_memory_embedding.requires_grad_(False)
    if cfg.freeze_prompt_encoder:
        set_requires_grad(model.prompt_encoder, False)
    if cfg.freeze_mask_decoder:
        set_requires_grad(model.mask_decoder, False)


def _looks_like_path(name: str) -> bool:
    """A local path rather than a Hub id (``org/name``)."""
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or name.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def _conversion_error(path: Path, model_type: str | None) -> ConfigError:
    name = (model_type or "sam2.1-hiera-large").replace("-", "_")
    return ConfigError(
        f"{path} is an original SAM2 checkpoint, and the installed transformers does not ship "
        "SAM2's conversion code (it is not in the pip package). Convert it once with the "
        "script from the transformers source repository, "
        "src/transformers/models/sam2/convert_sam2_to_hf.py:\n"
        f"  python convert_sam2_to_hf.py --model_name {name} --checkpoint_path {path} "
        "--pytorch_dump_folder_path <out_dir>\n"
        "(--model_name is one of sam2.1_hiera_tiny, sam2.1_hiera_small, sam2.1_hiera_base_plus, "
        "sam2.1_hiera_large; its final output check expects a CUDA GPU), then set "
        "model_name_or_path: <out_dir>."
    )


# --------------------------------------------------------------------------------------------
# Where a checkpoint comes from (shared with sam_hf.models.sam3)
# --------------------------------------------------------------------------------------------


class ModelNotFoundError(ConfigError, FileNotFoundError):
    """The model a config names is neither on this machine nor obtainable from the Hub."""


def hub_offline() -> bool:
    """Whether huggingface_hub refuses the network (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return bool(hf_constants.HF_HUB_OFFLINE)


def offline_flag() -> str:
    """The variable that switched the Hub off, as a user would unset it."""
    if os.environ.get("HF_HUB_OFFLINE") is None and os.environ.get("TRANSFORMERS_OFFLINE"):
        return "TRANSFORMERS_OFFLINE"
    return "HF_HUB_OFFLINE"


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def missing_model_error(source: str, family: str, why: str) -> ModelNotFoundError:
    """One line: the path or id, why it cannot be had, and what model_name_or_path accepts."""
    return ModelNotFoundError(
        f"model_name_or_path {source!r}: {why}. It accepts {MODEL_SOURCES[family]}."
    )


def _hub_error(source: str, revision: str | None, family: str, e: Exception) -> ConfigError:
    """A huggingface_hub failure to fetch ``source``'s config.json as one actionable line."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, hf_errors.LocalEntryNotFoundError | hf_errors.OfflineModeIsEnabled):
        if hub_offline():
            flag = offline_flag()
            return missing_model_error(
                source,
                family,
                f"not found locally and the Hub is offline ({flag}=1): unset {flag}, or "
                f"download it where there is network (hf download {source}) and give the "
                "local folder",
            )
        cause = e.__cause__ or e.__context__
        return missing_model_error(
            source,
            family,
            "not found locally and the Hub could not be reached"
            + (f" ({_first_line(cause)})" if cause is not None else "")
            + ": check the network or proxy, or give a local folder",
        )
    if isinstance(e, hf_errors.GatedRepoError):
        return ConfigError(
            f"model_name_or_path {source!r} is gated on the Hub: accept its license at "
            f"https://huggingface.co/{source} and log in with `hf auth login` (formerly "
            "`huggingface-cli login`) or set HF_TOKEN."
        )
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return ConfigError(
            f"model_name_or_path {source!r}: revision {revision!r} not found on the Hub; set "
            "revision to an existing branch, tag or commit (main by default)."
        )
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        return missing_model_error(
            source,
            family,
            "not found locally and not found on the Hub (a private repo also needs "
            "`hf auth login`)",
        )
    if isinstance(e, hf_errors.EntryNotFoundError | hf_errors.RemoteEntryNotFoundError):
        return missing_model_error(
            source, family, "this Hub repo has no config.json (it is no transformers model)"
        )
    if isinstance(e, hf_errors.HFValidationError):
        return missing_model_error(
            source, family, "not found locally, and it is not a valid Hub id either"
        )
    if status in (401, 403):
        return ConfigError(
            f"model_name_or_path {source!r}: the Hub refused access (HTTP {status}); log in "
            "with `hf auth login` (formerly `huggingface-cli login`) or set HF_TOKEN to a "
            "token that can read it."
        )
    if isinstance(e, hf_errors.HfHubHTTPError):
        return ConfigError(
            f"model_name_or_path {source!r}: the Hub answered HTTP {status} "
            f"({_first_line(e)}); try again later or give a local folder."
        )
    return missing_model_error(
        source,
        family,
        f"not found locally and the Hub could not be reached ({_first_line(e)}): check the "
        "network or proxy, or give a local folder",
    )


def read_model_config(source: str, revision: str | None, family: str) -> dict[str, Any]:
    """``source``'s config.json (a local folder, or a Hub id: that one small file is fetched),
    checked to hold a model of ``family`` -- before any weights are read.

    Everything that can go wrong is a :class:`ConfigError` of one line: a folder without
    config.json, an id that is not cached and cannot be fetched (offline, no network, not on
    the Hub, gated, refused), and a checkpoint of another family (naming the recipe to use).
    """
    check_model_name(source, family)
    path = Path(source).expanduser()
    if path.is_dir():
        file = path / "config.json"
        if not file.is_file():
            raise ConfigError(
                f"{path} is not a saved {family.upper()} model folder: it has no config.json. "
                "Point model_name_or_path at the folder save_pretrained wrote (or a Hub id)."
            )
    else:
        kwargs = {} if revision in (None, "", "main") else {"revision": revision}
        try:
            file = Path(hf_hub_download(source, "config.json", **kwargs))
        except Exception as e:  # noqa: BLE001 - every Hub/network failure becomes one line
            raise _hub_error(source, revision, family, e) from e
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{source}: its config.json does not parse ({_first_line(e)}).") from e
    check_checkpoint_family(raw, source, family)
    return raw


def load_error(source: str, family: str, e: Exception) -> ConfigError:
    """A transformers failure to load ``source`` (after its config.json was read) in one line."""
    return ConfigError(
        f"could not load the {family.upper()} model {source!r}: {_first_line(e)}. If this "
        "machine is offline, download it elsewhere (hf download) and give the local folder."
    )


def _load_pretrained(
    source: str, cfg: Any, revision: str | None
) -> tuple[Sam2Model, Sam2Processor]:
    kwargs = {} if revision in (None, "", "main") else {"revision": revision}
    read_model_config(source, revision, "sam2")  # the family, before any weights are read
    try:
        config = Sam2Config.from_pretrained(source, **kwargs)
    except OSError as e:
        raise load_error(source, "sam2", e) from e
    native = sam2_resolution(config)
    res = int(getattr(cfg, "resolution", None) or native)
    if res != native:
        logger.warning(
            "%s was trained at %d px; building it for resolution %d (weights are unchanged).",
            source,
            native,
            res,
        )
        set_sam2_resolution(config, res)
    try:
        model = Sam2Model.from_pretrained(source, config=config, **kwargs)
    except OSError as e:
        raise load_error(source, "sam2", e) from e
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
    folder written by ``save_pretrained``, an original ``.pt`` checkpoint (which needs a
    one-off conversion; the error says how) or ``"sam2-tiny"``. ``cfg.model_type`` (a sam2.1
    name) selects a Hub checkpoint instead of a Hub id in ``model_name_or_path``. The model is
    built for ``cfg.resolution`` and the processor resizes to it.
    """
    name = str(cfg.model_name_or_path or "").strip()
    model_type = getattr(cfg, "model_type", None)
    hub_from_type = SAM2_HUB_IDS[canonical_model_type(model_type)] if model_type else None
    low = name.lower()
    if low in _SAM1_HUB_IDS:
        raise _sam1_error(name, _SAM1_HUB_IDS[low])
    for k in SAM1_TO_SAM2:
        if low == k or low.startswith(f"sam_{k}"):
            raise _sam1_error(name, k)

    is_local = bool(name) and (Path(name).expanduser().exists() or _looks_like_path(name))
    if hub_from_type and (name in TINY_NAMES or is_local):
        logger.warning(
            "model_type %s is not used: model_name_or_path %s names the model itself.",
            model_type,
            name,
        )

    if name in TINY_NAMES:
        res = int(getattr(cfg, "resolution", None) or 256)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(getattr(cfg, "seed", 0)))
            model = Sam2Model(tiny_sam2_config(res))
            reinit_for_small_widths(model)
            tie_fourier_features(model)
        processor = build_sam2_processor(res)
    elif is_local:
        path = Path(name).expanduser()
        if not path.exists():
            raise missing_model_error(name, "sam2", "no such file or folder (not found locally)")
        if path.is_file():
            if path.suffix.lower() in (".pt", ".pth", ".ckpt"):
                raise _conversion_error(path, model_type and canonical_model_type(model_type))
            raise ConfigError(
                f"{path} is a single file; give the folder that holds config.json and the weights."
            )
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
    apply_freeze(model, cfg)
    return model, processor


# --------------------------------------------------------------------------------------------
# The training module
# --------------------------------------------------------------------------------------------


class Sam2ForTraining(nn.Module):
    """Sam2Model + prompt iterations + the official SAM2 loss, for the shared trainer.

    ``forward(batch)`` (a :class:`~sam_hf.data.collate.Sam2Collator` batch) encodes each image
    once and then, for all objects:

    1. decodes the initial prompt (point(s) or box);
    2. for objects flagged ``mask_prompt``, decodes again with the previous low-res logits as
       a mask prompt (same clicks);
    3. ``num_correction_clicks`` times: adds one click drawn from the error region of the
       current prediction (uniformly in training, the RITM center click in eval mode) and
       decodes with all clicks so far plus the previous low-res logits as mask prompt, as the
       official ``_iter_correct_pt_sampling``; gradients flow through the mask prompts, as
       there. Click randomness comes from the sample seed and the object's index.

    The loss of every step is summed (each step normalised by the number of objects).

    Args:
        model: a ``transformers.Sam2Model`` (``self.model``, saved with ``save_pretrained``).
        args: the resolved config (``multimask_output``, ``num_correction_clicks``,
            ``gradient_checkpointing`` and the loss keys).
    """

    def __init__(self, model: Sam2Model, args: Any) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = Sam2Loss.from_config(args)
        self.multimask_output = bool(args.multimask_output)
        self.num_correction_clicks = int(args.num_correction_clicks)
        if self.num_correction_clicks < 0:
            raise ValueError("num_correction_clicks must be >= 0.")
        if getattr(args, "gradient_checkpointing", False):
            n = enable_activation_checkpointing(self.model)
            logger.info("activation checkpointing on %d SAM2 blocks", n)

    # -- pieces ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _fixed_mask_selection(self) -> Iterator[None]:
        """Switch off the decoder's eval-only stability swap for the duration of a call."""
        dec = self.model.mask_decoder
        saved = dec.dynamic_multimask_via_stability
        dec.dynamic_multimask_via_stability = False
        try:
            yield
        finally:
            dec.dynamic_multimask_via_stability = saved

    def encoder_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's part of :meth:`image_embeddings`: the FPN maps, ``no_memory_embedding``
        added to the last. With a frozen encoder these are fixed per image, which is what the
        embedding cache (:mod:`sam_hf.features.cache`) stores. Run without autograd when frozen."""
        m = self.model
        ctx = contextlib.nullcontext() if encoder_is_trainable(m) else torch.no_grad()
        with ctx:
            feats = list(m.vision_encoder(pixel_values, return_dict=True).fpn_hidden_states)
            feats[-1] = feats[-1] + m.no_memory_embedding.reshape(1, -1, 1, 1)
        return feats

    def project_features(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The mask decoder's (trainable) ``conv_s0``/``conv_s1`` on the high-res maps."""
        m = self.model
        return [m.mask_decoder.conv_s0(feats[0]), m.mask_decoder.conv_s1(feats[1]), *feats[2:]]

    def image_embeddings(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The three feature maps Sam2Model's decoder reads, computed once per image.

        Same values as ``Sam2Model.get_image_embeddings`` (which runs under ``no_grad``), but
        differentiable, and with the Hiera encoder run without autograd when it is frozen
        (the decoder's ``conv_s0/s1`` projections still get gradients).
        """
        return self.project_features(self.encoder_features(pixel_values))

    def batch_embeddings(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """:meth:`image_embeddings` of the batch, from its cached encoder features
        (``batch["image_embeddings"]``, see :mod:`sam_hf.features.cache`) when it carries them, so the
        encoder is not run at all."""
        cached = batch.get("image_embeddings")
        if cached is not None:
            check_encoder_frozen(self.model)
            return self.project_features(list(cached))
        return self.image_embeddings(batch["pixel_values"])

    def decode(
        self,
        embeddings: list[torch.Tensor],
        image_index: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_inputs: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder for objects that all have the same number of points.

        Each object is its own batch element (the decoder's dense mask prompt is per batch
        element, so this is what lets objects of one image carry different mask prompts).

        Returns low-res mask logits (n, M, h, w), IoU predictions (n, M) and object-score
        logits (n, 1).
        """
        emb = [e.index_select(0, image_index) for e in embeddings]
        with self._fixed_mask_selection():
            out = self.model(
                image_embeddings=emb,
                input_points=points[:, None],
                input_labels=labels[:, None],
                input_masks=mask_inputs,
                multimask_output=multimask,
            )
        return out.pred_masks[:, 0], out.iou_scores[:, 0], out.object_score_logits[:, 0]

    def _use_multimask(self, num_points: int, with_mask_prompt: bool) -> bool:
        return self.multimask_output and num_points == 1 and not with_mask_prompt

    @staticmethod
    def _best_by_iou(masks: torch.Tensor, ious: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, M, h, w), (n, M) -> the mask with the highest predicted IoU (n, 1, h, w), (n,)."""
        best = ious.argmax(-1)
        idx = best[:, None, None, None].expand(-1, 1, *masks.shape[-2:])
        return masks.gather(1, idx), ious.gather(1, best[:, None]).squeeze(1)

    def _objects(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        valid = batch["object_valid"]
        img, slot = valid.nonzero(as_tuple=True)
        return {
            "image": img,
            "slot": slot,
            "gt": batch["masks"][img, slot],
            "points": batch["input_points"][img, slot],
            "labels": batch["input_labels"][img, slot],
            "count": batch["num_prompt_points"][img, slot],
        }

    @staticmethod
    def _groups(count: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Objects grouped by their number of prompt points: [(n_points, object indices)]."""
        return [(int(c), (count == c).nonzero().squeeze(1)) for c in torch.unique(count).tolist()]

    def _zero_output(self, batch: dict[str, Any]) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        if params:
            loss = torch.stack([p.sum() * 0.0 for p in params]).sum()
        else:
            loss = torch.zeros((), device=batch["pixel_values"].device, requires_grad=True)
        zero = loss.detach()
        return {
            "loss": loss,
            "terms": {f"loss_{n}": zero for n in self.loss_fn.term_names},
            "num_objects": 0,
            "num_skipped_empty": int(batch.get("num_skipped_empty", 0)),
        }

    # -- training -------------------------------------------------------------------------

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Loss of one batch: ``{"loss", "terms", "num_objects", "num_skipped_empty"}``.

        A batch without any object (every image was empty) gives a zero loss connected to
        every trainable parameter, so ``backward`` and DDP's all-reduce still work.
        """
        valid = batch["object_valid"]
        if valid.numel() == 0 or not bool(valid.any()):
            return self._zero_output(batch)
        pixel_values = batch["pixel_values"]
        res = pixel_values.shape[-1]
        obj = self._objects(batch)
        gt = obj["gt"]
        n = gt.shape[0]
        groups = self._groups(obj["count"])
        terms = self.loss_fn.new_terms(pixel_values)
        embeddings = self.batch_embeddings(batch)

        def run(
            members: torch.Tensor,
            pts: torch.Tensor,
            labs: torch.Tensor,
            mask_in: torch.Tensor | None,
        ) -> torch.Tensor:
            low, ious, scores = self.decode(
                embeddings,
                obj["image"][members],
                pts,
                labs,
                mask_in,
                self._use_multimask(pts.shape[1], mask_in is not None),
            )
            # The loss upsamples the low-res logits to the R x R ground truth itself, a few
            # objects at a time (sam_hf.losses.sam2: the full-res maps are never all alive).
            self.loss_fn.accumulate(terms, low, ious, scores, gt[members], n)
            return self._best_by_iou(low, ious)[0]

        # Step 1: the initial prompts.
        low_best: torch.Tensor | None = None
        state = []
        for count, members in groups:
            pts, labs = obj["points"][members, :count], obj["labels"][members, :count]
            best = run(members, pts, labs, None)
            if low_best is None:
                low_best = best.new_zeros((n, *best.shape[1:]))
            low_best = low_best.index_put((members,), best)
            state.append([members, pts, labs])
        assert low_best is not None

        # Step 2: previous logits as a mask prompt, for the flagged objects.
        flagged = (
            batch["mask_prompt"][obj["image"], obj["slot"]] if "mask_prompt" in batch else None
        )
        if flagged is not None and bool(flagged.any()):
            for members, pts, labs in state:
                sel = flagged[members].nonzero().squeeze(1)
                if sel.numel():
                    m = members[sel]
                    best = run(m, pts[sel], labs[sel], low_best[m])
                    low_best = low_best.index_put((m,), best)

        # Step 3: correction clicks from the current error region.
        if self.num_correction_clicks:
            seeds = batch["seeds"].tolist()
            ids = batch["object_ids"][obj["image"], obj["slot"]].tolist()
            gens = [
                make_generator(int(seeds[i]), "sam2-correction", int(o))
                for i, o in zip(obj["image"].tolist(), ids)
            ]
            method = "uniform" if self.training else "center"
            for _ in range(self.num_correction_clicks):
                with torch.no_grad():
                    pred = (
                        F.interpolate(
                            low_best.detach().float(),
                            size=(res, res),
                            mode="bilinear",
                            align_corners=False,
                        )[:, 0]
                        > 0
                    )
                    click, click_label = sample_correction_clicks(pred, gt, gens, method)
                for entry in state:
                    members, pts, labs = entry
                    pts = torch.cat([pts, click[members, None].to(pts.dtype)], dim=1)
                    labs = torch.cat([labs, click_label[members, None].to(labs.dtype)], dim=1)
                    entry[1], entry[2] = pts, labs
                    best = run(members, pts, labs, low_best[members])
                    low_best = low_best.index_put((members,), best)

        total = self.loss_fn.total(terms)
        return {
            "loss": total,
            "terms": {f"loss_{k}": v.detach() for k, v in terms.items()},
            "num_objects": n,
            "num_skipped_empty": int(batch.get("num_skipped_empty", 0)),
        }

    # -- evaluation -----------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One dict per image at its original resolution, from the batch's initial prompts.

        ``{"image_id", "pred_masks": bool (K, H, W), "gt_masks": bool (K, H, W), "scores": (K,)}``
        on the CPU, objects in batch order. The mask is the single-mask output, or with
        multimask output the one with the highest predicted IoU; ``scores`` is that predicted
        IoU. Low-res logits are upsampled bilinearly straight to (H, W) and thresholded at 0.
        No correction clicks or mask prompts are used: this is the one-prompt accuracy a user
        gets. Ground truth is ``orig_masks`` when the batch has it, else the R x R masks
        resized (nearest) to (H, W).
        """
        valid = batch["object_valid"]
        b = valid.shape[0]
        if b == 0 or not bool(valid.any()):
            return []
        obj = self._objects(batch)
        n = obj["gt"].shape[0]
        embeddings = self.batch_embeddings(batch)
        low_best: torch.Tensor | None = None
        scores = torch.zeros(n)
        for count, members in self._groups(obj["count"]):
            for chunk in members.split(PREDICT_CHUNK):
                low, ious, _ = self.decode(
                    embeddings,
                    obj["image"][chunk],
                    obj["points"][chunk, :count],
                    obj["labels"][chunk, :count],
                    None,
                    self._use_multimask(count, False),
                )
                best, score = self._best_by_iou(low, ious)
                if low_best is None:
                    low_best = best.new_zeros((n, *best.shape[1:]), dtype=torch.float32)
                low_best[chunk] = best.float()
                scores[chunk.cpu()] = score.float().cpu()
        assert low_best is not None

        out = []
        image_of = obj["image"]
        for i in range(b):
            members = (image_of == i).nonzero().squeeze(1)
            if members.numel() == 0:
                continue
            h, w = (int(v) for v in batch["orig_sizes"][i])
            preds = [
                F.interpolate(low_best[c], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                .gt(0)
                .cpu()
                for c in members.split(PREDICT_CHUNK)
            ]
            if "orig_masks" in batch:
                gt = batch["orig_masks"][i].bool().cpu()
            else:
                gt = (
                    F.interpolate(
                        obj["gt"][members][:, None].float(), size=(h, w), mode="nearest-exact"
                    )[:, 0]
                    .bool()
                    .cpu()
                )
            out.append(
                {
                    "image_id": batch["image_ids"][i],
                    "pred_masks": torch.cat(preds),
                    "gt_masks": gt,
                    "scores": scores[members.cpu()],
                }
            )
        return out
