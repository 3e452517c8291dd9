"""What to evaluate: a model source a user names, resolved and loaded for prediction.

A source is a small random config (``sam2-tiny``, ``sam3-tiny``, ``sam3-tracker-tiny``...), a
``save_pretrained``
folder (a run's ``final/`` or ``best/``), a peft adapter folder (merged into the base it
names), a run directory (its ``final/``) or a Hub id. :func:`resolve_source` decides which
without loading anything and reads the training config saved beside a fine-tune (the
settings its trainer evaluated with, see :mod:`sam_hf.eval.settings`); :func:`load_model`
builds the model with the same builders as training and wraps it for ``predict``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from peft import PeftModel

from sam_hf.config import Sam2Config, Sam3Config, Sam3TrackerConfig, load_config
from sam_hf.config.validate import GEOMETRIC_FAMILIES, family_name
from sam_hf.models.lora import merge_to_base
from sam_hf.models.sam2 import TINY_NAMES as SAM2_SMALL_NAMES
from sam_hf.models.sam2 import build_sam2
from sam_hf.models.sam2_training import Sam2ForTraining
from sam_hf.models.sam3 import TINY_NAMES as SAM3_SMALL_NAMES
from sam_hf.models.sam3 import Sam3ForTraining, build_sam3
from sam_hf.models.sam3_tracker import TINY_NAMES as TRACKER_SMALL_NAMES
from sam_hf.models.sam3_tracker import build_sam3_tracker

logger = logging.getLogger("sam_hf")

FAMILIES = ("sam2", "sam3", "sam3_tracker")
#: Per family: builder, config class, training wrapper (used for ``predict``).
_BUILD = {
    "sam2": (build_sam2, Sam2Config, Sam2ForTraining),
    "sam3": (build_sam3, Sam3Config, Sam3ForTraining),
    "sam3_tracker": (build_sam3_tracker, Sam3TrackerConfig, Sam2ForTraining),
}

#: Files a saved transformers folder holds its weights in.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
#: Where a run keeps its resolved config (final/ has training_config.yaml, the run config.yaml).
_RUN_CONFIG_NAMES = ("training_config.yaml", "config.yaml")
#: Suffixes of official (``torch.save``) checkpoints and the resolution they were trained at.
_OFFICIAL_SUFFIXES = (".pt", ".pth", ".ckpt")
_OFFICIAL_RESOLUTION = {"sam2": 1024, "sam3": 1008, "sam3_tracker": 1008}
#: Default resolutions of the small named random configs (sam2-tiny, sam2-mini, sam3-tiny...).
_TINY_RESOLUTION = {
    **{name: 256 for name in SAM2_SMALL_NAMES},
    **{name: 224 for name in SAM3_SMALL_NAMES},
    **{name: 224 for name in TRACKER_SMALL_NAMES},
}
#: peft's ``base_model_class`` (lowercase) -> family.
_ADAPTER_BASES = {"sam2model": "sam2", "sam3model": "sam3", "sam3trackermodel": "sam3_tracker"}
#: The family of each small named config.
_TINY_FAMILY = {
    **{name: "sam2" for name in SAM2_SMALL_NAMES},
    **{name: "sam3" for name in SAM3_SMALL_NAMES},
    **{name: "sam3_tracker" for name in TRACKER_SMALL_NAMES},
}


class EvaluationError(ValueError):
    """A model source or dataset cannot be evaluated; the message says how to fix it."""


@dataclass
class ModelSource:
    """What a user named, resolved into what ``build_sam2`` / ``build_sam3`` need.

    ``kind`` is ``"tiny"`` (``sam2-tiny`` / ``sam3-tiny``, random weights seeded by ``seed``),
    ``"folder"`` (a ``save_pretrained`` folder such as a run's ``final/`` or ``best/``),
    ``"adapter"`` (a peft folder; ``base`` is built first and the adapter merged into it),
    ``"official"`` (Meta's ``.pt``, converted on load) or ``"hub"`` (a Hub id).
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
    if mt.startswith("sam3_tracker"):
        return "sam3_tracker"
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


def _family_check(src: str, family: str | None) -> Callable[[str | None, str], str]:
    """``check(found, what)``: the family a source holds, checked against the one it was given.

    ``found`` is what ``what`` (e.g. "config.json model_type") says, None when it says nothing.
    """

    def check(found: str | None, what: str) -> str:
        if found is None:
            if family is None:
                raise EvaluationError(
                    f"cannot tell whether {src!r} is SAM2, SAM3 or SAM3 tracker ({what}); use "
                    "the sam2/sam3/sam3_tracker mode or the --sam2/--sam3/--sam3-tracker option "
                    "that names its family."
                )
            return family
        if family is not None and found != family:
            raise EvaluationError(
                f"{src!r} holds a {family_name(found)} model ({what}), but it was given as "
                f"{family_name(family)}; pass it with --{found.replace('_', '-')} instead."
            )
        return found

    return check


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
    check = _family_check(src, family)
    if src in _TINY_RESOLUTION:
        fam = check(_TINY_FAMILY[src], "small config name")
        return ModelSource(src, fam, "tiny", src, resolution or _TINY_RESOLUTION[src], seed)
    path = Path(src).expanduser()
    if path.exists():
        return _resolve_folder(src, path, family, seed, resolution, check)
    if src.startswith(("/", "./", "../", "~")) or src.count("/") > 1:
        raise EvaluationError(f"model source {src!r}: no such folder.")
    low = src.lower()
    # facebook/sam3 holds the detector and the tracker: the family asked for decides
    hub = "sam3" if "sam3" in low else "sam2" if "sam2" in low else None
    if hub == "sam3" and family == "sam3_tracker":
        hub = family
    fam = check(hub, "Hub id")
    return ModelSource(src, fam, "hub", src, resolution, seed)


def _resolve_folder(
    src: str,
    path: Path,
    family: str | None,
    seed: int,
    resolution: int | None,
    check: Callable[[str | None, str], str],
) -> ModelSource:
    """A saved model folder, an adapter folder, or a run directory (its final/ or best/)."""
    if path.is_file() and path.suffix in _OFFICIAL_SUFFIXES:
        return _resolve_official(src, path, family, seed, resolution, check)
    if not path.is_dir():
        raise EvaluationError(
            f"{src} is a file; give a model folder (config.json + model.safetensors), an "
            "official .pt, a peft adapter folder, a run directory, a Hub id or a small named "
            f"random config ({', '.join(_TINY_RESOLUTION)})."
        )
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
    if adapter is None:
        raise EvaluationError(
            f"{src} is neither a saved model (config.json + model.safetensors) nor a peft "
            "adapter folder (adapter_config.json), nor a run directory with final/."
        )
    return _resolve_adapter(src, adapter, run_cfg, seed, resolution, check)


def _resolve_official(
    src: str,
    path: Path,
    family: str | None,
    seed: int,
    resolution: int | None,
    check: Callable[[str | None, str], str],
) -> ModelSource:
    """An official ``.pt`` (converted on load by the same builder as training). Its family is
    the one asked for, else read from the file name (official SAM3 files are named sam3*)."""
    fam = check(family or ("sam3" if "sam3" in path.name.lower() else "sam2"), "file name")
    fam = family if family == "sam3_tracker" and fam == "sam3" else fam
    res = resolution or _OFFICIAL_RESOLUTION[fam]
    return ModelSource(src, fam, "official", str(path), res, seed)


def _resolve_adapter(
    src: str,
    adapter: Path,
    run_cfg: dict,
    seed: int,
    resolution: int | None,
    check: Callable[[str | None, str], str],
) -> ModelSource:
    """A peft adapter folder: its family and base from adapter_config.json or the run config."""
    acfg = _read_json(adapter / "adapter_config.json")
    base_cls = str((acfg.get("auto_mapping") or {}).get("base_model_class", "")).lower()
    fam_found = _ADAPTER_BASES.get(base_cls) or run_cfg.get("family")
    if fam_found is None and run_cfg:  # SAM2's prompt keys; only Sam2Config has model_type
        prompts = "prompt_type" in run_cfg
        fam_found = "sam3" if not prompts else "sam2" if "model_type" in run_cfg else "sam3_tracker"
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
        bool(run_cfg.get("multimask_output", True)),
        run_cfg,
    )


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
    """The validated config (Sam2Config / Sam3Config / Sam3TrackerConfig) the builders read."""
    values: dict[str, Any] = {"model_name_or_path": src.base, "seed": src.seed or 0}
    if src.resolution:
        values["resolution"] = int(src.resolution)
    if src.family in GEOMETRIC_FAMILIES:
        values["multimask_output"] = src.multimask_output
    values.update(overrides)
    return load_config(_BUILD[src.family][1], None, values)


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
    build, _, wrapper_cls = _BUILD[src.family]
    model, processor = build(cfg)
    if src.adapter is not None:
        model = merge_to_base(PeftModel.from_pretrained(model, src.adapter))
    module = wrapper_cls(model, cfg).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    return LoadedModel(src, module, processor, cfg, n_params)
