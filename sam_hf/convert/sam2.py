"""Official SAM2 / SAM2.1 checkpoints (``.pt``) <-> a transformers ``Sam2Model`` folder.

The one place for SAM2's key map. An official checkpoint (``{"model": state_dict}`` of
``sam2.modeling.sam2_base.SAM2Base``) holds two kinds of tensors:

- the image model (Hiera trunk + FPN neck, prompt encoder, mask decoder, ``no_mem_embed``):
  renamed one-to-one by :data:`RULES` into ``Sam2Model``'s keys. Two keys are not plain
  renames: the four ``point_embeddings.N.weight`` (1, C) rows are ``point_embed.weight``
  (4, C), and the one ``pe_layer.positional_encoding_gaussian_matrix`` is both of
  ``Sam2Model``'s Fourier matrices (``shared_image_embedding`` and the prompt encoder's);
- the video memory (``memory_attention``, ``memory_encoder``, ``maskmem_tpos_enc``,
  ``no_mem_pos_enc``, ``no_obj_ptr``, ``obj_ptr_proj``, ``mask_downsample`` and, in SAM2.1,
  ``no_obj_embed_spatial`` and ``obj_ptr_tpos_proj``): ``Sam2Model`` has no place for them.
  They are kept verbatim, under their official names, in ``official_extra.safetensors``
  beside the folder's ``model.safetensors`` (the folder still loads with plain
  ``Sam2Model.from_pretrained``; transformers ignores the extra file), so the export back
  is the complete checkpoint the official image and video predictors load.

Why not ``Sam2VideoModel``: its folder does not load as the ``Sam2Model`` sam_hf trains, and
the memory modules are never trained here, so carrying them unchanged is both simpler and
exact. Official -> HF -> official gives every tensor back bitwise, with the same key set.

The size (tiny, small, base_plus, large) is read from the tensors: the trunk's width
(``patch_embed``) and its number of blocks. A ``model_type`` (``sam2.1-hiera-large``,
``sam2_hiera_b+``, ``large``...) may be given instead; one that contradicts the file names the
keys whose shapes differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

from sam_hf.convert.common import (
    ConversionError,
    KeyMapError,
    Rule,
    check_keys,
    read_official,
    rename,
    save_official,
    weight_bias,
)

#: The file in a converted folder that carries the official memory modules.
EXTRA_FILE = "official_extra.safetensors"
#: Official video-memory keys that SAM2 and SAM3's tracker name alike (encodings, object
#: pointers, the mask downsampler); each adds its memory attention/encoder modules' prefixes.
SHARED_MEMORY_KEYS = (
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "mask_downsample.",
)
#: Official key prefixes (and exact names) that belong to the video memory, not Sam2Model.
MEMORY_PREFIXES = ("memory_attention.", "memory_encoder.", *SHARED_MEMORY_KEYS)
#: The memory parts every official SAM2 checkpoint has (the SAM2.1 extras are optional).
REQUIRED_MEMORY = (
    "memory_attention.",
    "memory_encoder.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "obj_ptr_proj.",
    "mask_downsample.",
)

#: Hiera trunk per size, as the official configs (configs/sam2.1/sam2.1_hiera_*.yaml) give it:
#: width, heads, blocks per stage, global-attention blocks, background pos-embed size, windows.
SIZES = {
    "sam2.1-hiera-tiny": (96, 1, [1, 2, 7, 2], [5, 7, 9], [7, 7], [8, 4, 14, 7]),
    "sam2.1-hiera-small": (96, 1, [1, 2, 11, 2], [7, 10, 13], [7, 7], [8, 4, 14, 7]),
    "sam2.1-hiera-base-plus": (112, 2, [2, 3, 16, 3], [12, 16, 20], [14, 14], [8, 4, 14, 7]),
    "sam2.1-hiera-large": (144, 2, [2, 6, 36, 4], [23, 33, 43], [7, 7], [8, 4, 16, 8]),
}
_SHORT = {"t": "tiny", "s": "small", "b": "base-plus", "l": "large"}


def _mlp3(official: str, hf: str) -> list[tuple[str, str]]:
    """The official 3-layer MLP (layers.0/1/2) is proj_in / layers.0 / proj_out in transformers."""
    return [
        (f"{official}.layers.0", f"{hf}.proj_in"),
        (f"{official}.layers.1", f"{hf}.layers.0"),
        (f"{official}.layers.2", f"{hf}.proj_out"),
    ]


def _attention(official: str, hf: str) -> list[tuple[str, str]]:
    names = [("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj")]
    return [(f"{official}.{o}", f"{hf}.{h}") for o, h in [*names, ("out_proj", "o_proj")]]


_TRUNK, _BACKBONE = "image_encoder.trunk", "vision_encoder.backbone"
_BLOCK, _HBLOCK = f"{_TRUNK}.blocks.{{}}", f"{_BACKBONE}.blocks.{{}}"
_PE, _HPE = "sam_prompt_encoder", "prompt_encoder"
_MD, _HMD = "sam_mask_decoder", "mask_decoder"
_LAYER, _HLAYER = f"{_MD}.transformer.layers.{{}}", f"{_HMD}.transformer.layers.{{}}"


def sam_heads_rules(mlp: tuple[str, str] = ("layers.0", "layers.1")) -> list[Rule]:
    """The prompt encoder and mask decoder (the "SAM heads"), official <-> transformers.

    SAM3's tracker has the same heads under the same names (its two-way transformer's MLP is
    ``lin1``/``lin2`` instead of ``layers.0``/``layers.1``), so it reuses these rules."""
    return [
        Rule(f"{_PE}.not_a_point_embed.weight", f"{_HPE}.not_a_point_embed.weight"),
        Rule(f"{_PE}.no_mask_embed.weight", f"{_HPE}.no_mask_embed.weight"),
        *[
            Rule(f"{_MD}.{n}.weight", f"{_HMD}.{n}.weight")
            for n in ("iou_token", "mask_tokens", "obj_score_token")
        ],
        *weight_bias(
            [
                (f"{_PE}.mask_downscaling.0", f"{_HPE}.mask_embed.conv1"),
                (f"{_PE}.mask_downscaling.1", f"{_HPE}.mask_embed.layer_norm1"),
                (f"{_PE}.mask_downscaling.3", f"{_HPE}.mask_embed.conv2"),
                (f"{_PE}.mask_downscaling.4", f"{_HPE}.mask_embed.layer_norm2"),
                (f"{_PE}.mask_downscaling.6", f"{_HPE}.mask_embed.conv3"),
                *[
                    pair
                    for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")
                    for pair in _attention(f"{_LAYER}.{a}", f"{_HLAYER}.{a}")
                ],
                *[(f"{_LAYER}.norm{i}", f"{_HLAYER}.layer_norm{i}") for i in range(1, 5)],
                (f"{_LAYER}.mlp.{mlp[0]}", f"{_HLAYER}.mlp.proj_in"),
                (f"{_LAYER}.mlp.{mlp[1]}", f"{_HLAYER}.mlp.proj_out"),
                *_attention(
                    f"{_MD}.transformer.final_attn_token_to_image",
                    f"{_HMD}.transformer.final_attn_token_to_image",
                ),
                (f"{_MD}.transformer.norm_final_attn", f"{_HMD}.transformer.layer_norm_final_attn"),
                (f"{_MD}.output_upscaling.0", f"{_HMD}.upscale_conv1"),
                (f"{_MD}.output_upscaling.1", f"{_HMD}.upscale_layer_norm"),
                (f"{_MD}.output_upscaling.3", f"{_HMD}.upscale_conv2"),
                (f"{_MD}.conv_s0", f"{_HMD}.conv_s0"),
                (f"{_MD}.conv_s1", f"{_HMD}.conv_s1"),
                *_mlp3(
                    f"{_MD}.output_hypernetworks_mlps.{{}}",
                    f"{_HMD}.output_hypernetworks_mlps.{{}}",
                ),
                *_mlp3(f"{_MD}.iou_prediction_head", f"{_HMD}.iou_prediction_head"),
                *_mlp3(f"{_MD}.pred_obj_score_head", f"{_HMD}.pred_obj_score_head"),
            ]
        ),
    ]


#: Official key <-> Sam2Model key, one-to-one (the two special cases are in the functions).
RULES: list[Rule] = [
    Rule("no_mem_embed", "no_memory_embedding"),
    Rule(f"{_TRUNK}.pos_embed", f"{_BACKBONE}.pos_embed"),
    Rule(f"{_TRUNK}.pos_embed_window", f"{_BACKBONE}.pos_embed_window"),
    *weight_bias(
        [
            (f"{_TRUNK}.patch_embed.proj", f"{_BACKBONE}.patch_embed.projection"),
            (f"{_BLOCK}.norm1", f"{_HBLOCK}.layer_norm1"),
            (f"{_BLOCK}.norm2", f"{_HBLOCK}.layer_norm2"),
            (f"{_BLOCK}.attn.qkv", f"{_HBLOCK}.attn.qkv"),
            (f"{_BLOCK}.attn.proj", f"{_HBLOCK}.attn.proj"),
            (f"{_BLOCK}.mlp.layers.0", f"{_HBLOCK}.mlp.proj_in"),
            (f"{_BLOCK}.mlp.layers.1", f"{_HBLOCK}.mlp.proj_out"),
            (f"{_BLOCK}.proj", f"{_HBLOCK}.proj"),
            ("image_encoder.neck.convs.{}.conv", "vision_encoder.neck.convs.{}"),
        ]
    ),
    *sam_heads_rules(),
]
#: The two keys that are not one-to-one renames.
OFFICIAL_POINTS = _PE + ".point_embeddings.{}.weight"
HF_POINTS = _HPE + ".point_embed.weight"
OFFICIAL_FOURIER = _PE + ".pe_layer.positional_encoding_gaussian_matrix"
HF_FOURIER = (
    _HPE + ".shared_embedding.positional_embedding",
    "shared_image_embedding.positional_embedding",
)


# --------------------------------------------------------------------------------------------
# Sizes and configs
# --------------------------------------------------------------------------------------------


def canonical_size(model_type: str) -> str:
    """``sam2.1-hiera-large`` / ``sam2_hiera_b+`` / ``large`` / ``t`` ... -> a key of SIZES."""
    key = str(model_type).strip().lower().replace("facebook/", "").replace("_", "-")
    key = key.replace("base+", "base-plus").replace("b+", "base-plus")
    for prefix in ("sam2.1-hiera-", "sam2-hiera-", "hiera-", ""):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            name = f"sam2.1-hiera-{_SHORT.get(rest, rest)}"
            if name in SIZES:
                return name
    raise ConversionError(
        f"model_type {model_type!r} is not a SAM2 size; choose one of {sorted(SIZES)} "
        "(sam2 and sam2.1 checkpoints of one size share the image architecture)."
    )


def sam2_config(model_type: str, resolution: int = 1024) -> Sam2Config:
    """The ``Sam2Config`` of an official size (the image model of its yaml) at ``resolution``."""
    width, heads, stages, global_blocks, background, windows = SIZES[canonical_size(model_type)]
    dims = [width * 2**i for i in range(4)]
    r = int(resolution)
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": width,
        "num_attention_heads": heads,
        "blocks_per_stage": list(stages),
        "embed_dim_per_stage": dims,
        "num_attention_heads_per_stage": [heads * 2**i for i in range(4)],
        "window_size_per_stage": list(windows),
        "global_attention_blocks": list(global_blocks),
        "window_positional_embedding_background_size": list(background),
        "image_size": [r, r],
    }
    vision = {
        "model_type": "sam2_vision_model",
        "backbone_config": backbone,
        "backbone_channel_list": dims[::-1],
        "backbone_feature_sizes": [[r // (4 * 2**i)] * 2 for i in range(3)],
    }
    return Sam2Config(vision_config=vision, prompt_encoder_config={"image_size": r})


def infer_size(state: Mapping[str, torch.Tensor]) -> str | None:
    """The official size whose trunk width and depth the tensors have, or None."""
    patch = state.get(f"{_TRUNK}.patch_embed.proj.weight")
    if patch is None:
        return None
    blocks = {k.split(".")[3] for k in state if k.startswith(f"{_TRUNK}.blocks.")}
    for name, (width, _, stages, *_rest) in SIZES.items():
        if patch.shape[0] == width and len(blocks) == sum(stages):
            return name
    return None


def expected_shapes(config: Sam2Config) -> dict[str, tuple[int, ...]]:
    """``Sam2Model(config)``'s state-dict keys and shapes (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = Sam2Model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------


def is_memory_key(key: str) -> bool:
    """An official key of the video memory (kept verbatim; ``Sam2Model`` has no place for it)."""
    return key.startswith(MEMORY_PREFIXES)


def _check_memory(what: str, memory: Mapping[str, torch.Tensor]) -> None:
    missing = [p.rstrip(".") for p in REQUIRED_MEMORY if not any(k.startswith(p) for k in memory)]
    if missing:
        raise KeyMapError(
            what,
            missing=missing,
            hint="The official SAM2 model needs its memory modules (official_extra.safetensors "
            "in a converted folder); give the official .pt they come from (memory_from).",
        )


def _size_error(what: str, size: str, found: str | None, mismatched: list[str]) -> ConversionError:
    looks = f"; the tensors look like {found}" if found else ""
    listed = "; ".join(mismatched[:8]) + (
        f"; ... and {len(mismatched) - 8} more" if len(mismatched) > 8 else ""
    )
    return ConversionError(
        f"{what} is not a {size} checkpoint{looks}. Size keys that do not match: {listed}. "
        "Set model_type to the checkpoint's size (or leave it unset to infer it)."
    )


def official_to_hf(
    state: Mapping[str, torch.Tensor],
    model_type: str | None = None,
    config: Sam2Config | None = None,
    what: str = "the checkpoint",
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Sam2Config]:
    """An official state dict as (``Sam2Model`` state dict, official memory tensors, config).

    ``config`` (e.g. a tiny test config) wins; else the size is ``model_type`` or inferred
    from the tensors. Keys that fit no rule, a missing or surplus key of the image model, a
    shape of another size and missing memory modules all raise, listing the keys.
    """
    memory = {k: v for k, v in state.items() if is_memory_key(k)}
    image = {k: v for k, v in state.items() if not is_memory_key(k)}
    points = {k: v for k, v in image.items() if Rule(OFFICIAL_POINTS, "x{}").apply(k, "official")}
    fourier = image.pop(OFFICIAL_FOURIER, None)
    hf, unknown = rename({k: v for k, v in image.items() if k not in points}, RULES, "official")
    if points:
        order = sorted(points, key=lambda k: int(k.split(".")[2]))
        hf[HF_POINTS] = torch.cat([points[k] for k in order], dim=0)
    if fourier is not None:
        hf[HF_FOURIER[0]], hf[HF_FOURIER[1]] = fourier, fourier.clone()
    found = infer_size(state)
    if config is None:
        size = canonical_size(model_type) if model_type else found
        if size is None:
            raise ConversionError(
                f"{what}: its trunk (patch_embed width, block count) matches no SAM2 size "
                f"({sorted(SIZES)}); set model_type, or convert with an explicit Sam2Config."
            )
        config = sam2_config(size)
    else:
        size = "the given config's"
    shapes = expected_shapes(config)
    mismatched = [
        f"{_official_name(k)}: file {tuple(v.shape)}, expected {shapes[k]}"
        for k, v in hf.items()
        if k in shapes and tuple(v.shape) != shapes[k]
    ]
    if mismatched or (model_type and found and found != size):
        raise _size_error(what, size, found, mismatched or ["(block count differs)"])
    check_keys(what, hf, shapes, unknown=unknown)
    _check_memory(what, memory)
    return hf, memory, config


def _official_name(hf_key: str) -> str:
    if hf_key in HF_FOURIER:
        return OFFICIAL_FOURIER
    if hf_key == HF_POINTS:
        return OFFICIAL_POINTS.replace("{}", "N")
    renamed, _ = rename({hf_key: torch.empty(0)}, RULES, "hf")
    return next(iter(renamed), hf_key)


def hf_to_official(
    hf_state: Mapping[str, torch.Tensor],
    memory: Mapping[str, torch.Tensor],
    config: Sam2Config | None = None,
    what: str = "the model",
) -> dict[str, torch.Tensor]:
    """A ``Sam2Model`` state dict and the official memory tensors as one official state dict.

    With ``config`` the key set is checked against ``Sam2Model(config)``'s. The two Fourier
    matrices must be equal (the official model has one); the memory must be complete.
    """
    hf = dict(hf_state)
    if config is not None:
        check_keys(what, hf, expected_shapes(config))
    out: dict[str, torch.Tensor] = {}
    points = hf.pop(HF_POINTS, None)
    if points is not None:
        for i in range(points.shape[0]):
            out[OFFICIAL_POINTS.format(i)] = points[i : i + 1].clone()
    prompt_pe, image_pe = (hf.pop(k, None) for k in HF_FOURIER)
    if prompt_pe is not None:
        if image_pe is not None and not torch.equal(prompt_pe, image_pe):
            raise ConversionError(
                f"{what}: {HF_FOURIER[0]} and {HF_FOURIER[1]} differ, but the official model "
                "has one Fourier matrix for both; tie them (sam_hf.models.sam2."
                "tie_fourier_features) before exporting."
            )
        out[OFFICIAL_FOURIER] = prompt_pe
    renamed, unknown = rename(hf, RULES, "hf")
    stray = [k for k in memory if not is_memory_key(k)]
    if unknown or stray:
        raise KeyMapError(what, unknown=unknown + stray)
    _check_memory(what, memory)
    return {**renamed, **out, **dict(memory)}


# --------------------------------------------------------------------------------------------
# Files: .pt <-> folder, and a built model
# --------------------------------------------------------------------------------------------


def load_official_sam2(
    path: str | Path, model_type: str | None = None, resolution: int | None = None
) -> tuple[Sam2Model, dict[str, torch.Tensor]]:
    """A ``Sam2Model`` with an official ``.pt``'s weights (every key checked) and the official
    memory tensors it has no place for. ``resolution`` rebuilds the size-dependent config
    fields (no weight depends on the input size)."""
    state = read_official(path)
    hf, memory, config = official_to_hf(state, model_type, what=str(path))
    if resolution is not None and int(resolution) != 1024:
        config = sam2_config(infer_size(state) or canonical_size(model_type), int(resolution))
    with torch.device("meta"):
        model = Sam2Model(config)
    model.load_state_dict(hf, strict=True, assign=True)
    return model.eval(), memory


def model_to_official(
    model: torch.nn.Module, memory: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A (fine-tuned) ``Sam2Model`` and the memory tensors of the checkpoint it came from as
    one official state dict (what ``build_sam2(ckpt_path=...)`` loads)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return hf_to_official(state, memory, getattr(model, "config", None), what=type(model).__name__)


def read_memory(folder: str | Path) -> dict[str, torch.Tensor] | None:
    """The official memory tensors a converted folder carries (``official_extra.safetensors``),
    or None when it has none."""
    file = Path(folder).expanduser() / EXTRA_FILE
    return load_file(str(file)) if file.is_file() else None


def write_memory(memory: Mapping[str, torch.Tensor], folder: str | Path, model_type: str) -> Path:
    """``official_extra.safetensors`` in ``folder``: the memory tensors under official names."""
    file = Path(folder).expanduser() / EXTRA_FILE
    tensors = {k: v.detach().cpu().contiguous() for k, v in memory.items()}
    save_file(tensors, str(file), metadata={"format": "pt", "sam2_model_type": model_type})
    return file


def official_to_folder(pt: str | Path, out_dir: str | Path, model_type: str | None = None) -> Path:
    """Convert an official ``.pt`` into a folder ``Sam2Model.from_pretrained`` loads
    (config.json, model.safetensors, processor files) plus ``official_extra.safetensors``."""
    state = read_official(pt)
    size = canonical_size(model_type) if model_type else infer_size(state)
    model, memory = load_official_sam2(pt, model_type)
    out = Path(out_dir).expanduser()
    model.save_pretrained(str(out))
    Sam2Processor(image_processor=Sam2ImageProcessor()).save_pretrained(str(out))
    write_memory(memory, out, size or "unknown")
    return out


def folder_to_official(
    folder: str | Path, out_pt: str | Path, memory_from: str | Path | None = None
) -> Path:
    """A ``Sam2Model`` folder (converted, or a run's ``final/``) as an official ``.pt``.

    The memory modules come from the folder's ``official_extra.safetensors`` or, given
    ``memory_from``, from that official ``.pt`` (e.g. the checkpoint a Hub model came from).
    """
    folder = Path(folder).expanduser()
    if memory_from is not None:
        memory = {k: v for k, v in read_official(memory_from).items() if is_memory_key(k)}
    else:
        memory = read_memory(folder)
    if memory is None:
        raise ConversionError(
            f"{folder} has no {EXTRA_FILE}: the official SAM2 model also needs the video memory "
            "modules, which a Sam2Model folder does not hold. Give the official .pt of the same "
            "size they come from (--memory_from / memory_from)."
        )
    model = Sam2Model.from_pretrained(str(folder))
    return save_official(model_to_official(model, memory), out_pt)
