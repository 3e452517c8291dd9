"""A fine-tune's weights in and out: ``init_from`` an earlier one, LoRA on top, the final folder.

Shared by SAM2 and SAM3. A run can start from the ``final/`` or ``best/`` folder of an
earlier fine-tune (:func:`load_finetuned_weights`: safetensors only, never pickle, checked to
hold the same family and to fit the model); ``use_lora`` wraps the model in peft adapters
(:func:`maybe_lora`); and the result is written as a plain transformers folder
(:func:`save_finetuned`), so users need neither peft nor sam_hf to load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sam_hf.config import ConfigError
from sam_hf.models.lora import apply_lora, merge_to_base, save_adapter


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


def load_finetuned_weights(model: torch.nn.Module, path: str, family: str) -> None:
    """Weights of an earlier fine-tune (a final/ or best/ folder) into a fresh model."""
    p = Path(path)
    _check_model_type(p, family)
    sd = _load_state_dict(p)
    if not set(sd) & set(model.state_dict()):
        # transformers writes some models under their source checkpoint's key names
        # (Sam3TrackerModel: tracker_model.*, its ViT under tracker_model.detector_model.*);
        # the class's own loader maps them back (safetensors only, this model's config)
        sd = type(model).from_pretrained(str(p), config=model.config, use_safetensors=True)
        sd = sd.state_dict()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or missing:
        raise ConfigError(
            f"init_from {p}: weights do not fit this model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); was it trained with another model_name_or_path?"
        )


def maybe_lora(model: torch.nn.Module, cfg: Any, family: str) -> torch.nn.Module:
    """Wrap ``model`` in peft LoRA adapters when ``use_lora`` is set (see ``sam_hf.models.lora``)."""
    if not cfg.use_lora:
        return model
    return apply_lora(model, cfg, family)


def save_finetuned(model: torch.nn.Module, processor: Any, out_dir: Path, cfg: Any) -> None:
    """A plain transformers folder; with LoRA, ``adapter/`` (peft) and, with ``merge_lora``,
    the merged model beside it, so users need neither peft nor sam_hf to load it."""
    processor.save_pretrained(str(out_dir))
    if not cfg.use_lora:
        model.save_pretrained(str(out_dir))
        return
    save_adapter(model, out_dir)
    if cfg.merge_lora:
        merge_to_base(model, copy_model=True).save_pretrained(str(out_dir))
