"""Official SAM3 checkpoints (``sam3.pt``) <-> a transformers ``Sam3Model`` folder.

The one place for SAM3's key map. The released ``sam3.pt`` is ``{"model": state_dict}`` of
the official video model (``sam3.model_builder.build_sam3_video_model``): ``detector.*`` is
the image model (``Sam3Image``: ViT + FPN, CLIP-style text encoder, geometry encoder, DETR
encoder/decoder, dot-product scoring, segmentation head) and ``tracker.*`` the SAM2-style
tracker. ``build_sam3_image_model`` loads the same file by stripping ``detector.`` (and, with
instance interactivity, reading ``tracker.*`` as ``inst_interactive_predictor.model.*``);
a bare ``Sam3Image`` state dict in that naming is accepted too (:func:`released_layout`).

Three kinds of official tensors:

- renamed into ``Sam3Model`` by :data:`RULES`. Not plain renames: fused attention inputs
  (the ViT's ``attn.qkv`` and every ``nn.MultiheadAttention``'s ``in_proj_*``) are split into
  ``q_proj`` / ``k_proj`` / ``v_proj`` (and concatenated back: bitwise both ways); the text
  encoder's ``text_projection`` is stored transposed; the ViT ``pos_embed`` has one more row
  (the pretraining cls token, which the official forward drops) than
  ``position_embeddings``;
- kept under their official names in ``official_extra.safetensors`` beside the folder's
  ``model.safetensors`` (``Sam3Model.from_pretrained`` ignores that file): the whole
  tracker, the tracker's FPN (``sam2_convs``), the point-prompt projections of the geometry
  encoder (``Sam3Model`` takes boxes only), the precomputed RoPE tables (``freqs_cis``) and
  the cls row of ``pos_embed``. So official -> HF -> official gives every tensor back
  bitwise with the same key set;
- anything else is an error that lists it (:class:`~sam_hf.convert.common.KeyMapError`),
  as are keys ``Sam3Model`` expects and the file does not give, or shapes that differ.

The tracker's image part (ViT shared with the detector, ``sam2_convs`` neck, prompt encoder,
mask decoder) is also written as a ``Sam3TrackerModel`` (:func:`tracker_state_dict`); its
memory modules exist only in transformers' video tracker and stay in the extra file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Sam3Config, Sam3Model, Sam3TrackerConfig
from transformers.initialization import no_init_weights

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
from sam_hf.convert.sam3_tracker import (
    check_shapes,
    expected_shapes,
    tracker_config,
    tracker_image_state,
)

#: The file in a converted folder that carries what Sam3Model has no place for (official names).
EXTRA_FILE = "official_extra.safetensors"
#: The subfolder of a converted folder holding the tracker's image part as a Sam3TrackerModel.
TRACKER_DIR = "tracker"
DETECTOR, TRACKER = "detector.", "tracker."
#: Official detector keys (without ``detector.``) carried verbatim: Sam3Model has no place.
CARRIED = (
    "backbone.vision_backbone.sam2_convs.",
    "geometry_encoder.points_",
)
_POS = "backbone.vision_backbone.trunk.pos_embed"
#: The extra-file key of pos_embed's first row (the pretraining cls token's position).
CLS_ROW = DETECTOR + _POS + ".cls_row"
HF_POS = "vision_encoder.backbone.embeddings.position_embeddings"
_FREQS = "backbone.vision_backbone.trunk.blocks.{}.attn.freqs_cis"
_TEXT_PROJ = "text_encoder.text_projection.weight"
#: Virtual transformers names of fused q/k/v tensors before the split (``X.in_proj_weight``).
_FUSED = ("in_proj_weight", "in_proj_bias")


def _mha(official: str, hf: str) -> list[Rule]:
    """``nn.MultiheadAttention`` (fused ``in_proj_*``, ``out_proj``) -> q/k/v/o_proj."""
    fused = [Rule(f"{official}.in_proj_{p}", f"{hf}.in_proj_{p}") for p in ("weight", "bias")]
    return fused + weight_bias([(f"{official}.out_proj", f"{hf}.o_proj")])


def _mlp(official: str, hf: str, n: int) -> list[tuple[str, str]]:
    """The official MLP's ``layers.0..n-1`` are ``layer1..n`` in transformers."""
    return [(f"{official}.layers.{i}", f"{hf}.layer{i + 1}") for i in range(n)]


def _encoder_layer(official: str, hf: str, cross: str) -> list[Rule]:
    """One official ``TransformerEncoderLayer`` (geometry and DETR encoders)."""
    return [
        *_mha(f"{official}.self_attn", f"{hf}.self_attn"),
        *_mha(f"{official}.{cross}", f"{hf}.cross_attn"),
        *weight_bias(
            [(f"{official}.linear1", f"{hf}.mlp.fc1"), (f"{official}.linear2", f"{hf}.mlp.fc2")]
        ),
        *weight_bias([(f"{official}.norm{i}", f"{hf}.layer_norm{i}") for i in (1, 2, 3)]),
    ]


_TRUNK, _VIT = "backbone.vision_backbone.trunk", "vision_encoder.backbone"
_BLOCK, _HBLOCK = f"{_TRUNK}.blocks.{{}}", f"{_VIT}.layers.{{}}"
_CONVS, _FPN = "backbone.vision_backbone.convs.{}", "vision_encoder.neck.fpn_layers.{}"
_TEXT, _CLIP = "backbone.language_backbone.encoder", "text_encoder.text_model"
_RES, _HRES = f"{_TEXT}.transformer.resblocks.{{}}", f"{_CLIP}.encoder.layers.{{}}"
_GEO, _DEC = "geometry_encoder", "transformer.decoder"
_DLAYER, _HDLAYER = f"{_DEC}.layers.{{}}", "detr_decoder.layers.{}"
_SEG, _MASK = "segmentation_head", "mask_decoder"

#: Official detector key (without ``detector.``) <-> Sam3Model key. The scale-4 level of the
#: FPN has two transposed convs (``dconv_2x2_0`` / ``_1``), the scale-2 level one
#: (``dconv_2x2``): transformers calls both first convs ``scale_layers.0``; the single one
#: goes through the virtual name ``scale_layers.single`` (see :func:`_neck_names`).
RULES: list[Rule] = [
    Rule(_POS, HF_POS),
    Rule(
        f"{_TRUNK}.patch_embed.proj.weight", f"{_VIT}.embeddings.patch_embeddings.projection.weight"
    ),
    Rule(f"{_BLOCK}.attn.qkv.weight", f"{_HBLOCK}.attention.in_proj_weight"),
    Rule(f"{_BLOCK}.attn.qkv.bias", f"{_HBLOCK}.attention.in_proj_bias"),
    Rule(f"{_TEXT}.token_embedding.weight", f"{_CLIP}.embeddings.token_embedding.weight"),
    Rule(f"{_TEXT}.positional_embedding", f"{_CLIP}.embeddings.position_embedding.weight"),
    Rule(f"{_TEXT}.text_projection", _TEXT_PROJ),
    *[Rule(f"{_GEO}.{n}.weight", f"{_GEO}.{n}.weight") for n in ("cls_embed", "label_embed")],
    *[
        Rule(f"{_DEC}.{n}.weight", f"detr_decoder.{n}.weight")
        for n in ("query_embed", "reference_points", "presence_token")
    ],
    *weight_bias(
        [
            (f"{_TRUNK}.ln_pre", f"{_VIT}.layer_norm"),
            (f"{_BLOCK}.norm1", f"{_HBLOCK}.layer_norm1"),
            (f"{_BLOCK}.norm2", f"{_HBLOCK}.layer_norm2"),
            (f"{_BLOCK}.attn.proj", f"{_HBLOCK}.attention.o_proj"),
            (f"{_BLOCK}.mlp.fc1", f"{_HBLOCK}.mlp.fc1"),
            (f"{_BLOCK}.mlp.fc2", f"{_HBLOCK}.mlp.fc2"),
            (f"{_CONVS}.dconv_2x2_0", f"{_FPN}.scale_layers.0"),
            (f"{_CONVS}.dconv_2x2_1", f"{_FPN}.scale_layers.2"),
            (f"{_CONVS}.dconv_2x2", f"{_FPN}.scale_layers.single"),
            (f"{_CONVS}.conv_1x1", f"{_FPN}.proj1"),
            (f"{_CONVS}.conv_3x3", f"{_FPN}.proj2"),
            (f"{_TEXT}.ln_final", f"{_CLIP}.final_layer_norm"),
            (f"{_RES}.attn.out_proj", f"{_HRES}.self_attn.out_proj"),
            (f"{_RES}.ln_1", f"{_HRES}.layer_norm1"),
            (f"{_RES}.ln_2", f"{_HRES}.layer_norm2"),
            (f"{_RES}.mlp.c_fc", f"{_HRES}.mlp.fc1"),
            (f"{_RES}.mlp.c_proj", f"{_HRES}.mlp.fc2"),
            ("backbone.language_backbone.resizer", "text_projection"),
            *[(f"{_GEO}.{n}", f"{_GEO}.{n}") for n in ("final_proj", "boxes_direct_project")],
            *[
                (f"{_GEO}.{n}", f"{_GEO}.{n}")
                for n in ("boxes_pool_project", "boxes_pos_enc_project")
            ],
            (f"{_GEO}.img_pre_norm", f"{_GEO}.vision_layer_norm"),
            (f"{_GEO}.norm", f"{_GEO}.prompt_layer_norm"),
            (f"{_GEO}.encode_norm", f"{_GEO}.output_layer_norm"),
            (f"{_DEC}.presence_token_out_norm", "detr_decoder.presence_layer_norm"),
            (f"{_DEC}.norm", "detr_decoder.output_layer_norm"),
            *_mlp(f"{_DEC}.presence_token_head", "detr_decoder.presence_head", 3),
            *_mlp(f"{_DEC}.bbox_embed", "detr_decoder.box_head", 3),
            *_mlp(f"{_DEC}.ref_point_head", "detr_decoder.ref_point_head", 2),
            *_mlp(f"{_DEC}.boxRPB_embed_x", "detr_decoder.box_rpb_embed_x", 2),
            *_mlp(f"{_DEC}.boxRPB_embed_y", "detr_decoder.box_rpb_embed_y", 2),
            (f"{_DLAYER}.linear1", f"{_HDLAYER}.mlp.fc1"),
            (f"{_DLAYER}.linear2", f"{_HDLAYER}.mlp.fc2"),
            (f"{_DLAYER}.norm1", f"{_HDLAYER}.vision_cross_attn_layer_norm"),
            (f"{_DLAYER}.catext_norm", f"{_HDLAYER}.text_cross_attn_layer_norm"),
            (f"{_DLAYER}.norm2", f"{_HDLAYER}.self_attn_layer_norm"),
            (f"{_DLAYER}.norm3", f"{_HDLAYER}.mlp_layer_norm"),
            *_mlp("dot_prod_scoring.prompt_mlp", "dot_product_scoring.text_mlp", 2),
            ("dot_prod_scoring.prompt_mlp.out_norm", "dot_product_scoring.text_mlp_out_norm"),
            ("dot_prod_scoring.prompt_proj", "dot_product_scoring.text_proj"),
            ("dot_prod_scoring.hs_proj", "dot_product_scoring.query_proj"),
            (f"{_SEG}.pixel_decoder.conv_layers.{{}}", f"{_MASK}.pixel_decoder.conv_layers.{{}}"),
            (f"{_SEG}.pixel_decoder.norms.{{}}", f"{_MASK}.pixel_decoder.norms.{{}}"),
            (f"{_SEG}.mask_predictor.mask_embed.layers.{{}}", f"{_MASK}.mask_embedder.layers.{{}}"),
            (f"{_SEG}.instance_seg_head", f"{_MASK}.instance_projection"),
            (f"{_SEG}.semantic_seg_head", f"{_MASK}.semantic_projection"),
            (f"{_SEG}.cross_attn_norm", f"{_MASK}.prompt_cross_attn_norm"),
        ]
    ),
    *_mha(f"{_RES}.attn", f"{_HRES}.self_attn"),
    *_encoder_layer(f"{_GEO}.encode.{{}}", f"{_GEO}.layers.{{}}", "cross_attn_image"),
    *_encoder_layer("transformer.encoder.layers.{}", "detr_encoder.layers.{}", "cross_attn_image"),
    *_mha(f"{_DLAYER}.self_attn", f"{_HDLAYER}.self_attn"),
    *_mha(f"{_DLAYER}.ca_text", f"{_HDLAYER}.text_cross_attn"),
    *_mha(f"{_DLAYER}.cross_attn", f"{_HDLAYER}.vision_cross_attn"),
    *_mha(f"{_SEG}.cross_attend_prompt", f"{_MASK}.prompt_cross_attn"),
]

# --------------------------------------------------------------------------------------------
# Tensor-level steps that are not renames (each undone exactly by its partner)
# --------------------------------------------------------------------------------------------


def released_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in the released ``sam3.pt`` naming (``detector.*`` / ``tracker.*``).

    A ``Sam3Image`` state dict (what ``build_sam3_image_model`` builds) has no prefix, and its
    instance-interactivity tracker sits under ``inst_interactive_predictor.model.``.
    """
    if any(k.startswith((DETECTOR, TRACKER)) for k in state):
        return dict(state)
    inst = "inst_interactive_predictor.model."
    return {
        (TRACKER + k[len(inst) :] if k.startswith(inst) else DETECTOR + k): v
        for k, v in state.items()
    }


def _split_fused(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        fused = next((f for f in _FUSED if key.endswith("." + f)), None)
        if fused is None:
            out[key] = value
            continue
        if value.shape[0] % 3:
            raise ConversionError(
                f"{key}: fused q/k/v of {value.shape[0]} rows is not 3 equal parts."
            )
        base, param = key[: -len(fused)], fused.split("_")[-1]
        for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
            out[f"{base}{name}_proj.{param}"] = part.clone()
    return out


def _fuse(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state)
    for key in [k for k in state if k.endswith((".q_proj.weight", ".q_proj.bias"))]:
        base, param = (
            key[: -len("q_proj.weight" if key.endswith("weight") else "q_proj.bias")],
            key.rsplit(".", 1)[1],
        )
        parts = [f"{base}{n}_proj.{param}" for n in "qkv"]
        if all(p in out for p in parts):
            out[f"{base}in_proj_{param}"] = torch.cat([out.pop(p) for p in parts], dim=0)
    return out


def _neck_from_virtual(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(".scale_layers.single.", ".scale_layers.0."): v for k, v in state.items()}


def _neck_to_virtual(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A level's ``scale_layers.0`` is the single ``dconv_2x2`` when it has no ``scale_layers.2``."""
    out = {}
    for key, value in state.items():
        head, sep, tail = key.partition(".scale_layers.0.")
        if sep and not any(k.startswith(head + ".scale_layers.2.") for k in state):
            key = head + ".scale_layers.single." + tail
        out[key] = value
    return out


def _carried(key: str) -> bool:
    """A detector key (without ``detector.``) that Sam3Model has no place for."""
    freqs = Rule(_FREQS, _FREQS).apply(key, "official") is not None
    return freqs or key.startswith(CARRIED)


# --------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------


def official_to_hf(
    official: Mapping[str, torch.Tensor], config: Sam3Config | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(``Sam3Model`` state dict, extra tensors under official names) of an official checkpoint.

    Raises :class:`KeyMapError` listing unknown, missing and unused keys, and
    :class:`ConversionError` for shapes the ``config`` (default: the released size) does not have.
    """
    config = config if config is not None else Sam3Config()
    state = released_layout(official)
    outside = [k for k in state if not k.startswith((DETECTOR, TRACKER))]
    extra = {k: v for k, v in state.items() if k.startswith(TRACKER)}
    detector = {}
    for key, value in state.items():
        if key.startswith(DETECTOR):
            short = key[len(DETECTOR) :]
            if _carried(short):
                extra[key] = value
            else:
                detector[short] = value
    pos = detector.get(_POS)
    if pos is not None:
        if pos.dim() != 3 or pos.shape[1] < 2:
            raise ConversionError(
                f"{DETECTOR}{_POS}: expected (1, 1 + tokens, width), got {tuple(pos.shape)}."
            )
        extra[CLS_ROW], detector[_POS] = pos[:, :1].clone(), pos[:, 1:].clone()
    renamed, unknown = rename(detector, RULES, "official")
    renamed = _split_fused(_neck_from_virtual(renamed))
    if _TEXT_PROJ in renamed:
        renamed[_TEXT_PROJ] = renamed[_TEXT_PROJ].t().contiguous()
    shapes = expected_shapes(Sam3Model, config)
    check_keys(
        "official SAM3 -> Sam3Model",
        renamed,
        shapes,
        unknown=[DETECTOR + k for k in unknown] + outside,
        hint="Official keys are detector.* (image model) and tracker.* (tracker).",
    )
    check_shapes("official SAM3 -> Sam3Model", renamed, shapes)
    return renamed, extra


def hf_to_official(
    hf_state: Mapping[str, torch.Tensor],
    extra: Mapping[str, torch.Tensor] | None = None,
    config: Sam3Config | None = None,
) -> dict[str, torch.Tensor]:
    """The official ``sam3.pt`` state dict (``detector.*`` + ``tracker.*``) of a Sam3Model's.

    ``extra`` (the folder's extra file) gives back what Sam3Model has no place for; without it
    the result holds the detector only, with a zero cls row in ``pos_embed`` (the official
    forward drops that row) -- enough for ``build_sam3_image_model``, which loads
    non-strictly, but not for the strict video builder. With ``config`` the keys are checked
    against ``Sam3Model(config)`` first.
    """
    extra = dict(extra or {})
    if config is not None:
        shapes = expected_shapes(Sam3Model, config)
        check_keys("Sam3Model -> official SAM3", hf_state, shapes)
        check_shapes("Sam3Model -> official SAM3", hf_state, shapes)
    state = dict(hf_state)
    if _TEXT_PROJ in state:
        state[_TEXT_PROJ] = state[_TEXT_PROJ].t().contiguous()
    official, unknown = rename(_neck_to_virtual(_fuse(state)), RULES, "hf")
    if unknown:
        raise KeyMapError("Sam3Model -> official SAM3", unknown=unknown)
    if _POS in official:
        pos = official[_POS]
        cls = extra.pop(CLS_ROW, None)
        cls = torch.zeros_like(pos[:, :1]) if cls is None else cls.to(pos.dtype)
        official[_POS] = torch.cat([cls, pos], dim=1)
    out = {DETECTOR + k: v for k, v in official.items()}
    clash = sorted(set(out) & set(extra))
    if clash:
        raise KeyMapError(
            "Sam3Model -> official SAM3: the extra tensors repeat model keys", unused=clash
        )
    out.update(extra)
    return out


def tracker_state_dict(
    official: Mapping[str, torch.Tensor],
    hf_state: Mapping[str, torch.Tensor],
    config: Sam3TrackerConfig,
) -> dict[str, torch.Tensor]:
    """The ``Sam3TrackerModel`` state dict of an official checkpoint's tracker image part: the
    ViT is the detector's (from ``hf_state``, the converted Sam3Model), the neck the
    detector's ``sam2_convs``; see :mod:`sam_hf.convert.sam3_tracker`."""
    state = released_layout(official)
    neck_prefix = DETECTOR + "backbone.vision_backbone.sam2_convs."
    neck = {
        "backbone.vision_backbone.convs." + k[len(neck_prefix) :]: v
        for k, v in state.items()
        if k.startswith(neck_prefix)
    }
    vision, _ = rename(neck, RULES, "official")
    vision = _neck_from_virtual(vision)
    vision.update({k: v for k, v in hf_state.items() if k.startswith(_VIT + ".")})
    tracker = {k[len(TRACKER) :]: v for k, v in state.items() if k.startswith(TRACKER)}
    return tracker_image_state(tracker, vision, config)


# --------------------------------------------------------------------------------------------
# Files: official .pt <-> folder (config.json + model.safetensors [+ extra file, tracker/])
# --------------------------------------------------------------------------------------------


def _save_folder(state: dict[str, torch.Tensor], config, architecture: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config.architectures = [architecture]
    config.save_pretrained(out)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )


def official_to_folder(
    source: str | Path | Mapping[str, torch.Tensor],
    out_dir: str | Path,
    config: Sam3Config | None = None,
    tracker: bool = True,
) -> Path:
    """Write an official SAM3 checkpoint (a ``.pt`` path or its state dict) as a folder that
    loads with ``Sam3Model.from_pretrained``; the extra file keeps the rest, and with
    ``tracker`` (and a tracker in the file) ``tracker/`` loads with
    ``Sam3TrackerModel.from_pretrained``."""
    official = read_official(source) if isinstance(source, str | Path) else released_layout(source)
    config = config if config is not None else Sam3Config()
    hf_state, extra = official_to_hf(official, config)
    out = Path(out_dir).expanduser()
    _save_folder(hf_state, config, "Sam3Model", out)
    save_file({k: v.contiguous() for k, v in extra.items()}, out / EXTRA_FILE)
    if tracker and any(k.startswith(TRACKER) for k in official):
        t_config = tracker_config(config)
        t_state = tracker_state_dict(official, hf_state, t_config)
        _save_folder(t_state, t_config, "Sam3TrackerModel", out / TRACKER_DIR)
    return out


def released_sam3_config() -> Sam3Config:
    """The architecture of the released ``sam3.pt`` (transformers' defaults, 1008 px)."""
    return Sam3Config()


def load_official_sam3(path: str | Path) -> Sam3Model:
    """The detector of an official SAM3 ``.pt`` as a ``Sam3Model`` of the released size,
    every key checked (the tracker is not trained by sam_hf; ``official_to_folder`` keeps it)."""
    config = released_sam3_config()
    state, _ = official_to_hf(read_official(path), config)
    with no_init_weights():  # not the meta device: RoPE / position buffers get computed
        model = Sam3Model(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def read_extra(folder: str | Path) -> dict[str, torch.Tensor]:
    """The extra tensors a converted folder carries ({} when it has none, e.g. a Hub model)."""
    path = Path(folder).expanduser() / EXTRA_FILE
    return load_file(path) if path.is_file() else {}


def folder_to_official(
    source: str | Path | Sam3Model,
    out_path: str | Path,
    extra: str | Path | Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a Sam3Model (a folder, e.g. a fine-tune's ``final/``, or a model) as an official
    ``sam3.pt``. ``extra``: a converted folder (or its extra tensors) to take the tracker and
    the other carried tensors from; by default the source folder's own extra file."""
    if isinstance(source, Sam3Model):
        model = source
        default_extra: Mapping[str, torch.Tensor] = {}
    else:
        folder = Path(source).expanduser()
        if not (folder / "config.json").is_file():
            raise ConversionError(f"{folder}: not a transformers folder (no config.json).")
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        if model_type != "sam3":
            raise ConversionError(
                f"{folder}: holds a {model_type!r} model, not a Sam3Model ('sam3')."
            )
        model = Sam3Model.from_pretrained(folder)
        default_extra = read_extra(folder)
    if extra is None:
        extra = default_extra
    elif not isinstance(extra, Mapping):
        extra = read_extra(extra)
    state = hf_to_official(model.state_dict(), extra, config=model.config)
    return save_official(state, out_path)
