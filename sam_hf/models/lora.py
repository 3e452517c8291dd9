"""LoRA adapters for SAM2 / SAM3 through peft: named target groups, trainable heads, small checkpoints.

A user picks *groups* (``lora_target_groups: [vision_encoder, mask_decoder]``) rather than module
names; each group is an exact regular expression over the module names of transformers'
``Sam2Model`` / ``Sam3Model`` (peft full-matches a string ``target_modules`` against every module
name). Exact patterns matter: in SAM2's Hiera, ``blocks.N.proj`` is the stage-transition
projection that changes the channel width, and a bare ``proj`` suffix would adapt it along with
the attention output ``blocks.N.attn.proj``.

The small output heads (IoU / object-score / hypernetwork MLPs for SAM2; box, presence,
classification-scoring and mask-embedding heads for SAM3) are trained in full as peft
``modules_to_save``: they map decoder features straight onto the quantities the losses supervise,
are a tiny fraction of the parameters (~1 M of SAM2-large's 224 M, ~2 M of SAM3's 840 M), and a
new domain mostly needs them re-calibrated -- a low-rank update would only slow that down.

Checkpoints hold adapters and those heads only (:func:`trainable_state_dict`); the final result is
either the adapter folder (:func:`save_adapter`, loadable with ``PeftModel.from_pretrained``) or a
merged plain transformers model (:func:`merge_to_base`).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

logger = logging.getLogger("sam_hf")

_IDX = r"\d+"

#: family -> group -> regex of module names (full match, relative to Sam2Model / Sam3Model).
LORA_GROUPS: dict[str, dict[str, str]] = {
    "sam2": {
        # Hiera attention only: the fused qkv and the attention output projection. Not the
        # stage-transition `blocks.N.proj` (changes width between stages) and not the MLPs.
        "vision_encoder": rf"vision_encoder\.backbone\.blocks\.{_IDX}\.attn\.(qkv|proj)",
        # The two-way transformer of the mask decoder: token self-attention, both cross
        # attentions of every layer, and the final token-to-image attention.
        "mask_decoder": (
            rf"mask_decoder\.transformer\.(layers\.{_IDX}\.(self_attn|cross_attn_token_to_image|"
            r"cross_attn_image_to_token)|final_attn_token_to_image)\.(q|k|v|o)_proj"
        ),
    },
    "sam3": {
        # The ViT backbone's attention (the FPN neck and the MLPs stay frozen).
        "vision_encoder": rf"vision_encoder\.backbone\.layers\.{_IDX}\.attention\.(q|k|v|o)_proj",
        # CLIP text transformer self-attention (CLIP names its output projection out_proj).
        "text_encoder": (
            rf"text_encoder\.text_model\.encoder\.layers\.{_IDX}\.self_attn\.(q|k|v|out)_proj"
        ),
        # DETR decoder: query self-attention, text cross-attention, image cross-attention.
        "detr_decoder": (
            rf"detr_decoder\.layers\.{_IDX}\.(self_attn|text_cross_attn|vision_cross_attn)\."
            r"(q|k|v|o)_proj"
        ),
        # The mask decoder's one attention: image features attending to the prompt.
        "mask_decoder": r"mask_decoder\.prompt_cross_attn\.(q|k|v|o)_proj",
    },
}

#: SAM3's tracker head: SAM3's ViT under a SAM2 mask decoder (the module names of both).
LORA_GROUPS["sam3_tracker"] = {
    "vision_encoder": LORA_GROUPS["sam3"]["vision_encoder"],
    "mask_decoder": LORA_GROUPS["sam2"]["mask_decoder"],
}

#: family -> regexes of the heads trained in full (peft ``modules_to_save``). ModuleLists are
#: listed per element because peft cannot wrap a ModuleList itself.
LORA_HEADS: dict[str, tuple[str, ...]] = {
    "sam2": (
        r"mask_decoder\.iou_prediction_head",
        r"mask_decoder\.pred_obj_score_head",
        rf"mask_decoder\.output_hypernetworks_mlps\.{_IDX}",
    ),
    "sam3": (
        r"detr_decoder\.box_head",
        r"detr_decoder\.presence_head",
        r"dot_product_scoring",  # the per-query classification logits (query . text)
        r"mask_decoder\.mask_embedder",
        r"mask_decoder\.instance_projection",
        r"mask_decoder\.semantic_projection",
    ),
}

LORA_HEADS["sam3_tracker"] = LORA_HEADS["sam2"]

#: family -> freeze flag of the config -> module-name prefix it freezes. A head under a frozen
#: prefix is not put in modules_to_save (the user asked for that part to stay fixed).
FREEZE_PREFIXES: dict[str, dict[str, str]] = {
    "sam2": {
        "freeze_image_encoder": "vision_encoder.",
        "freeze_prompt_encoder": "prompt_encoder.",
        "freeze_mask_decoder": "mask_decoder.",
    },
    "sam3": {
        "freeze_vision_encoder": "vision_encoder.",
        "freeze_text_encoder": "text_encoder.",
    },
}

FREEZE_PREFIXES["sam3_tracker"] = FREEZE_PREFIXES["sam2"]

# Parameter/buffer names that belong to an adapter or to a fully trained copy of a head.
_TRAINABLE_KEY = re.compile(
    r"(^|\.)(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\."
    r"|(^|\.)modules_to_save\."
)


def _check_family(family: str) -> None:
    if family not in LORA_GROUPS:
        raise ValueError(f"Unknown model family {family!r}; expected one of {sorted(LORA_GROUPS)}.")


def target_regex(family: str, groups: Iterable[str] = (), raw_regex: str | None = None) -> str:
    """The peft ``target_modules`` regex for ``groups`` of ``family`` (``raw_regex`` wins).

    Raises ValueError naming the valid groups when one does not exist for the family (e.g.
    ``text_encoder`` for SAM2, which has no text model).
    """
    _check_family(family)
    if raw_regex:
        re.compile(raw_regex)  # fail here, with the pattern in the traceback, not inside peft
        return raw_regex
    groups = list(groups)
    valid = LORA_GROUPS[family]
    bad = [g for g in groups if g not in valid]
    if bad:
        raise ValueError(
            f"lora_target_groups {bad} do not exist for {family}; valid groups are "
            f"{sorted(valid)} (or give lora_target_regex)."
        )
    if not groups:
        raise ValueError(
            f"No LoRA targets: set lora_target_groups (any of {sorted(valid)}) or "
            "lora_target_regex."
        )
    return "|".join(f"(?:{valid[g]})" for g in dict.fromkeys(groups))


def matching_modules(model: nn.Module, regex: str) -> list[str]:
    """Names of the modules of ``model`` that ``regex`` full-matches (what peft will adapt)."""
    pattern = re.compile(regex)
    return [name for name, _ in model.named_modules() if name and pattern.fullmatch(name)]


def heads_to_save(model: nn.Module, family: str, cfg: Any = None) -> list[str]:
    """Exact names of the heads trained in full, minus those under a part the config freezes."""
    _check_family(family)
    frozen = [
        prefix
        for flag, prefix in FREEZE_PREFIXES[family].items()
        if bool(getattr(cfg, flag, False))
    ]
    patterns = [re.compile(p) for p in LORA_HEADS[family]]
    return [
        name
        for name, _ in model.named_modules()
        if name
        and any(p.fullmatch(name) for p in patterns)
        and not any(name.startswith(f) for f in frozen)
    ]


def apply_lora(model: nn.Module, cfg: Any, family: str) -> PeftModel:
    """Wrap a plain ``Sam2Model`` / ``Sam3Model`` with LoRA adapters as ``cfg`` asks.

    Reads ``cfg.lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_groups``,
    ``lora_target_regex`` and the family's freeze flags (these only decide which heads are
    ``modules_to_save``; every base weight is frozen by peft). The model is modified in place.
    """
    regex = target_regex(family, getattr(cfg, "lora_target_groups", ()), cfg.lora_target_regex)
    targets = matching_modules(model, regex)
    if not targets:
        raise ValueError(
            f"The LoRA target pattern {regex!r} matches no module of {type(model).__name__}. "
            f"Pass the plain transformers model (not a wrapper) and check lora_target_regex."
        )
    heads = heads_to_save(model, family, cfg)
    inside = [t for t in targets if any(t.startswith(h + ".") for h in heads)]
    if inside:
        raise ValueError(
            f"LoRA targets {inside[:4]} lie inside heads that are trained in full ({heads[:4]}...); "
            "narrow lora_target_regex to leave those heads out."
        )
    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=regex,
        modules_to_save=heads or None,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info(
        "LoRA r=%d alpha=%d on %d modules; heads trained in full: %s; trainable %d of %d "
        "parameters (%.2f%%).",
        cfg.lora_r,
        cfg.lora_alpha,
        len(targets),
        heads or "none",
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    return peft_model


def find_peft_model(module: nn.Module) -> PeftModel:
    """The PeftModel in ``module`` (itself, or inside a training wrapper / DDP)."""
    if isinstance(module, PeftModel):
        return module
    for m in module.modules():
        if isinstance(m, PeftModel):
            return m
    raise TypeError(f"{type(module).__name__} holds no peft model; was apply_lora called?")


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel / torch.compile wrappers so keys never carry ``module.``."""
    return extract_model_from_parallel(model, keep_fp32_wrapper=True)


def is_trainable_key(name: str) -> bool:
    """Whether a state-dict key belongs to a LoRA adapter or a fully trained head copy."""
    return _TRAINABLE_KEY.search(name) is not None


def filter_trainable(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter + head entries of a full state dict (e.g. from ``accelerator.get_state_dict``)."""
    return {k: v for k, v in state_dict.items() if is_trainable_key(k)}


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapters and ``modules_to_save`` only: what a LoRA checkpoint needs to hold.

    Keys are those of ``model.state_dict()`` after unwrapping DDP, so the same (wrapper) module
    can load them back with :func:`load_trainable_state_dict`. The frozen base weights are left
    out: a resume rebuilds them from ``model_name_or_path``.
    """
    sd = filter_trainable(_unwrap(model).state_dict())
    if not sd:
        raise ValueError(f"{type(model).__name__} has no LoRA adapter or modules_to_save weights.")
    return sd


def load_trainable_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load what :func:`trainable_state_dict` returned; every adapter/head key must match.

    Raises ValueError when keys are missing or unexpected (a different rank, target groups or
    family than the run that wrote the checkpoint), instead of silently keeping fresh adapters.
    """
    target = _unwrap(model)
    own = {k for k in target.state_dict() if is_trainable_key(k)}
    given = set(state_dict)
    missing, unexpected = sorted(own - given), sorted(given - own)
    if missing or unexpected:
        raise ValueError(
            "The LoRA checkpoint does not fit this model (were lora_r / lora_target_groups / "
            f"lora_target_regex changed?). Missing {missing[:4]} ({len(missing)}), unexpected "
            f"{unexpected[:4]} ({len(unexpected)})."
        )
    target.load_state_dict(dict(state_dict), strict=False)


def save_adapter(peft_model: nn.Module, out_dir: str | Path) -> Path:
    """Write ``out_dir/adapter`` (adapter_config.json + adapter_model.safetensors).

    It loads with ``PeftModel.from_pretrained(base_model, out_dir / "adapter")`` where
    ``base_model`` is the same base checkpoint the run started from.
    """
    path = Path(out_dir) / "adapter"
    find_peft_model(peft_model).save_pretrained(str(path), safe_serialization=True)
    return path


def merge_to_base(peft_model: nn.Module, copy_model: bool = False) -> nn.Module:
    """Fold the adapters into the base weights: a plain ``Sam2Model`` / ``Sam3Model``.

    ``merge_and_unload`` rewrites the wrapped model in place, after which the PeftModel must not
    be used again; with ``copy_model=True`` a deep copy is merged instead (twice the memory) so
    training can continue with the adapters.
    """
    pm = find_peft_model(peft_model)
    if copy_model:
        pm = copy.deepcopy(pm)
    merged = pm.merge_and_unload(progressbar=False, safe_merge=True)
    leftovers = [n for n, _ in merged.named_modules() if "lora_" in n or "modules_to_save" in n]
    if leftovers:  # a peft version that leaves wrappers behind would break from_pretrained
        raise RuntimeError(f"merge_and_unload left peft modules behind: {leftovers[:4]}")
    return merged
