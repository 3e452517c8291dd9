"""Model cards: what a finished run is, rendered from ``sam_hf/assets/model_card_template.md``.

A card is built from what the run left on disk -- its resolved config
(``final/training_config.yaml``) and ``all_results.json`` -- so it can be written long after
training, on a machine without the training hardware. ``ModelCard.validate()`` asks the Hub
(``POST /api/validate-yaml``), so it only runs in a real push (:mod:`sam_hf.hub.push`);
:func:`check_card` is the offline part (the YAML header parses back into the same
``ModelCardData``, and the model-index into the same results) and runs always.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import RepoCard

from sam_hf.config.validate import (
    GEOMETRIC_FAMILIES,
    RECIPES,
    SAM2_MODEL_TYPES,
    family_name,
)

TEMPLATE_PATH = Path(__file__).parent.parent / "assets" / "model_card_template.md"
#: transformers model and processor class of each family.
_CLASSES = {
    "sam2": ("Sam2Model", "Sam2Processor"),
    "sam3": ("Sam3Model", "Sam3Processor"),
    "sam3_tracker": ("Sam3TrackerModel", "Sam3TrackerProcessor"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATASET_URL = re.compile(r"^https://huggingface\.co/datasets/([\w.-]+/[\w.-]+)")


# --------------------------------------------------------------------------------- helpers


def cfg_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass, namespace or mapping as a plain dict."""
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    return dict(vars(cfg))


def load_run_config(output_dir: str | os.PathLike, subdir: str = "final") -> dict[str, Any]:
    """The resolved config a run saved (``final/training_config.yaml`` or ``config.yaml``).

    Read as plain YAML, not re-validated: a run trained with fp16 on GPUs must still be
    pushable from a CPU login node.
    """
    out = Path(output_dir)
    for path in (out / subdir / "training_config.yaml", out / "config.yaml"):
        if path.is_file():
            return yaml.safe_load(path.read_text()) or {}
    raise FileNotFoundError(
        f"{out} holds no training_config.yaml or config.yaml; is it a sam_hf output_dir?"
    )


def load_eval_results(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's flat results (``all_results.json``, else ``eval_results.json``: ``eval_<m>``,
    ``initial_eval_<m>``, ``best_eval_<m>``, ``global_step`` ...), or {} if absent."""
    for name in ("all_results.json", "eval_results.json"):
        path = Path(output_dir) / name
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def final_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """The ``eval_<metric>`` values of flat results, without the prefix."""
    return {k[len("eval_") :]: v for k, v in results.items() if k.startswith("eval_")}


def base_model_id(cfg: Mapping[str, Any]) -> str | None:
    """The Hub id the run started from, or None for tiny/random configs and local folders."""
    model_type = cfg.get("model_type")
    if model_type in SAM2_MODEL_TYPES:
        return SAM2_MODEL_TYPES[model_type]
    name = str(cfg.get("model_name_or_path") or "")
    if _HUB_ID.match(name) and not Path(name).exists() and not name.endswith(".pt"):
        return name
    return None


def infer_family(cfg: Mapping[str, Any], model_dir: str | os.PathLike | None = None) -> str:
    """sam2 / sam3 / sam3_tracker from the config (saved configs omit ``family``) or the saved
    model's type."""
    if cfg.get("family") in RECIPES:
        return str(cfg["family"])
    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
        if model_type in RECIPES:
            return str(model_type)
    if "prompt_type" in cfg:  # keys only SAM2's prompts have; the tracker has no model_type
        return "sam2" if "model_type" in cfg else "sam3_tracker"
    if "negative_ratio" in cfg:  # keys only the SAM3 config has
        return "sam3"
    raise ValueError("Cannot tell whether this run trained SAM2 or SAM3; pass family=.")


def dataset_id_from_url(url: str | None) -> str | None:
    """``me/apples`` from ``https://huggingface.co/datasets/me/apples[...]``."""
    m = _DATASET_URL.match(url or "")
    return m.group(1) if m else None


def _license_of(base: str | None) -> dict[str, str]:
    """The base checkpoint's license (a fine-tune inherits it): only for the known bases."""
    if base and base.startswith("facebook/sam2"):
        return {"license": "apache-2.0"}
    if base and base.startswith("facebook/sam3"):
        return {
            "license": "other",
            "license_name": "sam-license",
            "license_link": "https://huggingface.co/facebook/sam3/blob/main/LICENSE",
        }
    return {}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def metric_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows ``name | initial | final | change`` for every numeric final metric."""
    rows = []
    for name, value in final_metrics(results).items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        before = results.get(f"initial_eval_{name}")
        delta = "-"
        if isinstance(before, int | float) and not isinstance(before, bool):
            d = value - before
            delta = f"{d:+d}" if isinstance(d, int) else f"{d:+.4f}"
        rows.append({"name": name, "initial": _fmt(before), "final": _fmt(value), "delta": delta})
    return rows


def _config_text(output_dir: str | os.PathLike, c: Mapping[str, Any]) -> str:
    """The YAML the run saved (verbatim, reloadable with --config), else ``c`` dumped sorted."""
    out = Path(output_dir)
    for path in (out / "final" / "training_config.yaml", out / "config.yaml"):
        if path.is_file():
            return path.read_text().strip()
    return yaml.safe_dump(dict(c), sort_keys=True).strip()


def _versions() -> list[tuple[str, str]]:
    out = []
    for pkg in ("sam_hf", "transformers", "peft", "accelerate", "torch", "datasets"):
        try:
            out.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            continue
    return out


def usage_snippet(
    family: str,
    repo_id: str,
    adapter_only: bool,
    base_model: str,
    example_phrase: str = "apple",
    score_threshold: float = 0.5,
) -> str:
    """Python that loads the pushed model with plain transformers (or peft for adapters)."""
    if family not in _CLASSES:
        raise ValueError(f"Unknown model family {family!r}; expected one of {sorted(_CLASSES)}.")
    model_cls, proc_cls = _CLASSES[family]
    head = ["import torch", "from PIL import Image"]
    if adapter_only:
        head.append("from peft import PeftModel")
    head.append(f"from transformers import {model_cls}, {proc_cls}")
    lines = [*head, ""]
    if adapter_only:
        lines += [
            f'base = {model_cls}.from_pretrained("{base_model}")',
            f'model = PeftModel.from_pretrained(base, "{repo_id}").merge_and_unload().eval()',
            f'processor = {proc_cls}.from_pretrained("{base_model}")',
        ]
    else:
        lines += [
            f'model = {model_cls}.from_pretrained("{repo_id}").eval()',
            f'processor = {proc_cls}.from_pretrained("{repo_id}")',
        ]
    lines += ["", 'image = Image.open("image.jpg").convert("RGB")']
    if family in GEOMETRIC_FAMILIES:
        lines += [
            "# one positive click (x, y) in pixels on one object: image > object > point > xy",
            "inputs = processor(",
            '    images=image, input_points=[[[[60, 40]]]], input_labels=[[[1]]], return_tensors="pt"',
            ")",
            "with torch.no_grad():",
            "    outputs = model(**inputs, multimask_output=False)",
            'masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])[0]',
            "print(masks.shape)  # (objects, 1, height, width), boolean",
        ]
    else:
        lines += [
            "# a text concept: every matching instance is segmented",
            f'inputs = processor(images=image, text="{example_phrase}", return_tensors="pt")',
            "with torch.no_grad():",
            "    outputs = model(**inputs)",
            "results = processor.post_process_instance_segmentation(",
            f"    outputs, threshold={score_threshold}, mask_threshold=0.5,",
            '    target_sizes=inputs["original_sizes"].tolist(),',
            ")[0]",
            'print(results["masks"].shape, results["scores"])',
        ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ model card


@dataclasses.dataclass
class CardFacts:
    """What a card says about a run, resolved once from its config and results."""

    c: dict[str, Any]
    family: str
    results: dict[str, Any]
    adapter_only: bool
    repo_id: str
    base: str | None
    base_name: str
    dataset_id: str | None
    dataset_name: str
    dataset_card_url: str | None
    recipe: str

    @property
    def use_lora(self) -> bool:
        return bool(self.c.get("use_lora"))

    @property
    def family_name(self) -> str:
        return family_name(self.family)

    @property
    def model_name(self) -> str:
        return self.repo_id.split("/")[-1]


def card_facts(
    output_dir: str | os.PathLike,
    cfg: Any,
    metrics: Mapping[str, Any] | None = None,
    family: str | None = None,
    dataset_card_url: str | None = None,
    *,
    repo_id: str | None = None,
    adapter_only: bool | None = None,
    recipe: str | None = None,
) -> CardFacts:
    """The facts :func:`make_model_card` renders (arguments as there)."""
    c = cfg_dict(cfg)
    family = family or infer_family(c, Path(output_dir) / "final")
    if family not in RECIPES:
        raise ValueError(f"Unknown model family {family!r}; expected one of {sorted(RECIPES)}.")
    if adapter_only is None:
        adapter_only = bool(c.get("use_lora")) and not c.get("merge_lora")
    base = base_model_id(c)
    dataset_id = dataset_id_from_url(dataset_card_url)
    return CardFacts(
        c=c,
        family=family,
        results=dict(metrics) if metrics is not None else load_eval_results(output_dir),
        adapter_only=bool(adapter_only),
        repo_id=repo_id or c.get("hub_model_id") or f"<your-username>/{Path(output_dir).name}",
        base=base,
        base_name=base or str(c.get("model_name_or_path") or "unknown"),
        dataset_id=dataset_id,
        dataset_name=dataset_id or Path(str(c.get("dataset_path") or "dataset")).name,
        dataset_card_url=dataset_card_url,
        recipe=recipe or RECIPES[family],
    )


def card_data(f: CardFacts) -> ModelCardData:
    """The card's YAML metadata: base model, dataset, library, tags, license, model-index."""
    eval_results = None
    if f.dataset_id and final_metrics(f.results):
        eval_results = [
            EvalResult(
                task_type="mask-generation",
                dataset_type=f.dataset_id,
                dataset_name=f.dataset_name,
                dataset_split=f.c.get("eval_split"),
                metric_type=name,
                metric_name=name,
                metric_value=float(value),
            )
            for name, value in final_metrics(f.results).items()
            if isinstance(value, float)
        ] or None
    tags = ["sam_hf", f.family, "segmentation", "mask-generation"]
    if f.use_lora:
        tags += ["lora", "peft"]
    return ModelCardData(
        model_name=f.model_name,
        base_model=f.base,
        datasets=[f.dataset_id] if f.dataset_id else None,
        library_name="peft" if f.adapter_only else "transformers",
        pipeline_tag="mask-generation",
        tags=tags,
        eval_results=eval_results,
        **_license_of(f.base),
    )


def _origin_lines(f: CardFacts) -> dict[str, str]:
    """Where the model comes from: the summary, base model, data and prompts."""
    c, fam = f.c, f.family_name
    if f.base:
        base_line = f"[{f.base}](https://huggingface.co/{f.base})"
        summary = f"{fam} fine-tuned from `{f.base}` on `{f.dataset_name}`."
    else:
        base_line = f"`{f.base_name}` (not a Hub checkpoint)"
        summary = f"{fam} fine-tuned from `{f.base_name}` on `{f.dataset_name}`."
    if f.dataset_card_url:
        dataset_line = f"`{f.dataset_name}` ([data card]({f.dataset_card_url}))"
    else:
        dataset_line = (
            f"`{f.dataset_name}`, prepared at `{c.get('dataset_path')}`; its data card is the "
            "README.md beside the prepared data (push it with `scripts/push_to_hub.py "
            "DATASET_DIR --repo-id ...` to link it here)"
        )
    if f.family in GEOMETRIC_FAMILIES:
        prompt_line = (
            f"{c.get('prompt_type', 'point')} prompts simulated from the ground truth, "
            f"{c.get('num_points', 1)} point(s) per object"
        )
    else:
        prompt_line = "text-concept queries with sampled negative phrases"
    return {
        "summary": summary,
        "base_model_line": base_line,
        "dataset_line": dataset_line,
        "prompt_line": prompt_line,
    }


def _training_lines(f: CardFacts) -> dict[str, str]:
    """How it was trained: the weights it holds, the best checkpoint, the hyperparameters."""
    c = f.c
    if f.use_lora:
        groups = c.get("lora_target_regex") or ", ".join(c.get("lora_target_groups") or [])
        lora_desc = (
            f"LoRA (r={c.get('lora_r')}, alpha={c.get('lora_alpha')}, "
            f"dropout={c.get('lora_dropout')}) on {groups}; output heads trained in full"
        )
        weights_line = (
            f"{lora_desc}. This repo holds the adapter only (load it on top of the base model "
            "with peft)."
            if f.adapter_only
            else f"{lora_desc}, merged into the base weights: a plain transformers model."
        )
    else:
        weights_line = "full fine-tune: a plain transformers model."
    best_metric = str(c.get("metric_for_best_model") or "").removeprefix("eval_")
    best_value, best_step = (
        f.results.get(f"best_eval_{best_metric}"),
        f.results.get("best_global_step"),
    )
    best_line = ""
    if best_step is not None and best_value is not None:
        best_line = (
            f"Best {best_metric} during training: {_fmt(best_value)} at step "
            f"{best_step} (the `best/` folder of the run)."
        )
    precision = "bf16" if c.get("bf16") else "fp16" if c.get("fp16") else "no"
    training_line = (
        f"{c.get('num_train_epochs')} epoch(s) / max_steps {c.get('max_steps')}, batch size "
        f"{c.get('per_device_train_batch_size')} per device x "
        f"{c.get('gradient_accumulation_steps')} accumulation, "
        f"AdamW lr {c.get('learning_rate')} ({c.get('lr_scheduler_type')} schedule), weight decay "
        f"{c.get('weight_decay')}, mixed precision {precision}, resolution "
        f"{c.get('resolution')} px, seed {c.get('seed')}. Reproduce with "
        f"`accelerate launch {f.recipe} --config training_config.yaml`."
    )
    return {"weights_line": weights_line, "best_line": best_line, "training_line": training_line}


def _usage_intro(f: CardFacts) -> str:
    if f.adapter_only:
        return (
            f"Load the base model with transformers, add this adapter with peft, and (optionally) "
            f"merge it for faster inference. Any `{f.family_name}` prompt works as with the base "
            "model."
        )
    return "A plain `transformers` model: no sam_hf needed to run it."


def make_model_card(
    output_dir: str | os.PathLike,
    cfg: Any,
    metrics: Mapping[str, Any] | None = None,
    family: str | None = None,
    dataset_card_url: str | None = None,
    *,
    repo_id: str | None = None,
    adapter_only: bool | None = None,
    recipe: str | None = None,
    example_phrase: str = "apple",
) -> ModelCard:
    """The model card of a finished run, rendered from ``sam_hf/assets/model_card_template.md``.

    ``metrics`` is the run's flat results (``all_results.json``: ``eval_<m>``,
    ``initial_eval_<m>``, ``best_eval_<m>``, ``global_step``, ``num_processes``; read from
    ``output_dir`` when None). ``dataset_card_url`` links the data card
    (a Hub dataset URL also fills the ``datasets`` metadata and the model-index).
    ``adapter_only`` defaults to ``use_lora and not merge_lora``.
    """
    f = card_facts(
        output_dir,
        cfg,
        metrics,
        family,
        dataset_card_url,
        repo_id=repo_id,
        adapter_only=adapter_only,
        recipe=recipe,
    )
    card = ModelCard.from_template(
        card_data=card_data(f),
        template_path=str(TEMPLATE_PATH),
        model_name=f.model_name,
        recipe=f.recipe,
        family_name=f.family_name,
        num_processes=int(f.results.get("num_processes", 1) or 1),
        global_step=f.results.get("global_step", "?"),
        eval_split=f.c.get("eval_split", "validation"),
        metric_rows=metric_rows(f.results),
        usage_intro=_usage_intro(f),
        usage=usage_snippet(
            f.family,
            f.repo_id,
            f.adapter_only,
            f.base_name,
            example_phrase=example_phrase,
            score_threshold=float(f.c.get("score_threshold", 0.5) or 0.5),
        ),
        config_yaml=_config_text(output_dir, f.c),
        versions=_versions(),
        **_origin_lines(f),
        **_training_lines(f),
    )
    check_card(card)
    return card


def check_card(card: RepoCard) -> None:
    """Offline card checks: the YAML header parses back into the same metadata.

    ``card.validate()`` (the Hub's own validator) needs the network and runs in the push.
    """
    text = str(card)
    if not text.startswith("---\n"):
        raise ValueError("The card has no YAML metadata header.")
    reparsed = type(card)(text)
    if reparsed.data.to_dict() != card.data.to_dict():
        raise ValueError("The card's YAML header does not round-trip.")
    if isinstance(card, ModelCard):
        data = reparsed.data
        for key in ("library_name", "pipeline_tag", "tags"):
            if not getattr(data, key, None):
                raise ValueError(f"The model card lacks {key!r} in its metadata.")
        if card.data.eval_results and len(data.eval_results or []) != len(card.data.eval_results):
            raise ValueError("The card's model-index does not parse back into its results.")
