"""Model cards and pushes to the Hugging Face Hub (models with their card, datasets with theirs).

Two rules shape this module:

* **The token never leaves huggingface_hub.** It comes from ``HF_TOKEN`` or the cached login
  (``hf auth login``), resolved by ``HfApi`` itself; this module never reads, prints, logs or
  writes it (an explicit ``token=`` from Python code is handed straight to ``HfApi``).
* **What is pushed is exactly a local folder.** The card is written into the folder that is
  uploaded (``final/``, or ``final/adapter/`` for an adapter-only run), so the Hub repo and the
  local folder hold the same files and a user can inspect what went up.

``ModelCard.validate()`` asks the Hub (``POST /api/validate-yaml``), so it only runs in a real
push; :func:`check_card` is the offline part (the YAML header parses back into the same
``ModelCardData``, and the model-index into the same results) and runs always.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import (
    DatasetCard,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    get_token,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.repocard import RepoCard

logger = logging.getLogger("sam_hf")

TEMPLATE_PATH = Path(__file__).parent / "assets" / "model_card_template.md"
#: The recipe script of each family (what the card names as the way to reproduce the run).
RECIPES = {"sam2": "recipes/sam2_mineapple.py", "sam3": "recipes/sam3_coco_text.py"}
_FAMILY_NAMES = {"sam2": "SAM2", "sam3": "SAM3"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATASET_URL = re.compile(r"^https://huggingface\.co/datasets/([\w.-]+/[\w.-]+)")
_NO_TOKEN = (
    "No Hugging Face token found. Log in once with `hf auth login` (or `huggingface-cli login`), "
    "or export HF_TOKEN in the environment; sam_hf never takes a token on the command line."
)


# --------------------------------------------------------------------------------- helpers


def _cfg_dict(cfg: Any) -> dict[str, Any]:
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
    """``output_dir/eval_results.json`` (initial / final / best / train), or {} if absent."""
    path = Path(output_dir) / "eval_results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def base_model_id(cfg: Mapping[str, Any]) -> str | None:
    """The Hub id the run started from, or None for tiny/random configs and local folders."""
    from sam_hf.config.args import SAM2_MODEL_TYPES

    model_type = cfg.get("model_type")
    if model_type in SAM2_MODEL_TYPES:
        return SAM2_MODEL_TYPES[model_type]
    name = str(cfg.get("model_name_or_path") or "")
    if _HUB_ID.match(name) and not Path(name).exists() and not name.endswith(".pt"):
        return name
    return None


def infer_family(cfg: Mapping[str, Any], model_dir: str | os.PathLike | None = None) -> str:
    """sam2 / sam3 from the config (saved configs omit ``family``) or the saved model's type."""
    if cfg.get("family") in RECIPES:
        return str(cfg["family"])
    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
        if model_type in RECIPES:
            return str(model_type)
    if "prompt_type" in cfg:  # keys only the SAM2 config has
        return "sam2"
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
    initial = results.get("initial") or {}
    final = results.get("final") or {}
    rows = []
    for name, value in final.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        before = initial.get(name)
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
    if family == "sam2":
        model_cls, proc_cls = "Sam2Model", "Sam2Processor"
    elif family == "sam3":
        model_cls, proc_cls = "Sam3Model", "Sam3Processor"
    else:
        raise ValueError(f"Unknown model family {family!r}; expected sam2 or sam3.")
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
    if family == "sam2":
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

    ``metrics`` is the content of ``eval_results.json`` (``initial`` / ``final`` / ``best`` /
    ``train``; read from ``output_dir`` when None). ``dataset_card_url`` links the data card
    (a Hub dataset URL also fills the ``datasets`` metadata and the model-index).
    ``adapter_only`` defaults to ``use_lora and not merge_lora``.
    """
    c = _cfg_dict(cfg)
    family = family or infer_family(c, Path(output_dir) / "final")
    if family not in RECIPES:
        raise ValueError(f"Unknown model family {family!r}; expected one of {sorted(RECIPES)}.")
    results = dict(metrics) if metrics is not None else load_eval_results(output_dir)
    use_lora = bool(c.get("use_lora"))
    if adapter_only is None:
        adapter_only = use_lora and not c.get("merge_lora")
    repo_id = repo_id or c.get("hub_model_id") or f"<your-username>/{Path(output_dir).name}"
    base = base_model_id(c)
    base_name = base or str(c.get("model_name_or_path") or "unknown")
    dataset_id = dataset_id_from_url(dataset_card_url)
    dataset_name = dataset_id or Path(str(c.get("dataset_path") or "dataset")).name
    fam = _FAMILY_NAMES[family]
    model_name = repo_id.split("/")[-1]

    eval_results = None
    if dataset_id and results.get("final"):
        eval_results = [
            EvalResult(
                task_type="mask-generation",
                dataset_type=dataset_id,
                dataset_name=dataset_name,
                dataset_split=c.get("eval_split"),
                metric_type=name,
                metric_name=name,
                metric_value=float(value),
            )
            for name, value in results["final"].items()
            if isinstance(value, float)
        ] or None
    tags = ["sam_hf", family, "segmentation", "mask-generation"]
    if use_lora:
        tags += ["lora", "peft"]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base,
        datasets=[dataset_id] if dataset_id else None,
        library_name="peft" if adapter_only else "transformers",
        pipeline_tag="mask-generation",
        tags=tags,
        eval_results=eval_results,
        **_license_of(base),
    )

    if base:
        base_line = f"[{base}](https://huggingface.co/{base})"
        summary = f"{fam} fine-tuned from `{base}` on `{dataset_name}`."
    else:
        base_line = f"`{base_name}` (not a Hub checkpoint)"
        summary = f"{fam} fine-tuned from `{base_name}` on `{dataset_name}`."
    if dataset_card_url:
        dataset_line = f"`{dataset_name}` ([data card]({dataset_card_url}))"
    else:
        dataset_line = (
            f"`{dataset_name}`, prepared at `{c.get('dataset_path')}`; its data card is the "
            "README.md beside the prepared data (push it with `scripts/push_to_hub.py "
            "DATASET_DIR --repo-id ...` to link it here)"
        )
    if family == "sam2":
        prompt_line = (
            f"{c.get('prompt_type', 'point')} prompts simulated from the ground truth, "
            f"{c.get('num_points', 1)} point(s) per object"
        )
    else:
        prompt_line = "text-concept queries with sampled negative phrases"
    if use_lora:
        groups = c.get("lora_target_regex") or ", ".join(c.get("lora_target_groups") or [])
        lora_desc = (
            f"LoRA (r={c.get('lora_r')}, alpha={c.get('lora_alpha')}, "
            f"dropout={c.get('lora_dropout')}) on {groups}; output heads trained in full"
        )
        weights_line = (
            f"{lora_desc}. This repo holds the adapter only (load it on top of the base model "
            "with peft)."
            if adapter_only
            else f"{lora_desc}, merged into the base weights: a plain transformers model."
        )
    else:
        weights_line = "full fine-tune: a plain transformers model."
    train = results.get("train") or {}
    best = results.get("best") or {}
    best_metric = c.get("metric_for_best_model")
    best_line = ""
    if best.get("step") is not None and best_metric in best:
        best_line = (
            f"Best {best_metric} during training: {_fmt(best.get(best_metric))} at step "
            f"{best['step']} (the `best/` folder of the run)."
        )
    if adapter_only:
        usage_intro = (
            f"Load the base model with transformers, add this adapter with peft, and (optionally) "
            f"merge it for faster inference. Any `{fam}` prompt works as with the base model."
        )
    else:
        usage_intro = "A plain `transformers` model: no sam_hf needed to run it."
    training_line = (
        f"{c.get('num_epochs')} epoch(s) / max_steps {c.get('max_steps')}, batch size "
        f"{c.get('batch_size')} per device x {c.get('gradient_accumulation_steps')} accumulation, "
        f"AdamW lr {c.get('learning_rate')} ({c.get('lr_scheduler')} schedule), weight decay "
        f"{c.get('weight_decay')}, mixed precision {c.get('mixed_precision')}, resolution "
        f"{c.get('resolution')} px, seed {c.get('seed')}. Reproduce with "
        f"`accelerate launch {recipe or RECIPES[family]} --config training_config.yaml`."
    )
    card = ModelCard.from_template(
        card_data=card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        summary=summary,
        base_model_line=base_line,
        dataset_line=dataset_line,
        recipe=recipe or RECIPES[family],
        family_name=fam,
        prompt_line=prompt_line,
        weights_line=weights_line,
        num_processes=int(train.get("num_processes", 1) or 1),
        global_step=train.get("global_step", "?"),
        eval_split=c.get("eval_split", "validation"),
        metric_rows=metric_rows(results),
        best_line=best_line,
        usage_intro=usage_intro,
        usage=usage_snippet(
            family,
            repo_id,
            adapter_only,
            base_name,
            example_phrase=example_phrase,
            score_threshold=float(c.get("score_threshold", 0.5) or 0.5),
        ),
        training_line=training_line,
        config_yaml=_config_text(output_dir, c),
        versions=_versions(),
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


# ------------------------------------------------------------------------------------ push


def _make_api(api: HfApi | None, token: str | None) -> HfApi:
    if api is not None:
        return api
    if token is None and get_token() is None:
        raise RuntimeError(_NO_TOKEN)
    return HfApi(token=token)


def push_error_kind(e: BaseException) -> str:
    """What kind of failure a push hit, for a one-line report: ``offline`` (HF_HUB_OFFLINE),
    ``auth`` (no or a refused token), ``network`` (unreachable, timeout, 5xx), or ``error``
    (anything else: a bad repo id, a card the Hub rejects...). Offline and auth failures do
    not heal by retrying within the run; network failures may."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return "offline"
    if isinstance(e, RuntimeError) and str(e) == _NO_TOKEN:
        return "auth"
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            return "auth"
        if status is None or status >= 500 or status == 429:
            return "network"
        return "error"
    if isinstance(e, network_errors()):
        return "network"
    return "error"


LOGIN = "`hf auth login` (formerly `huggingface-cli login`) or export HF_TOKEN"


def network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures of the HTTP clients huggingface_hub and datasets may use."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests.exceptions", "ConnectionError"),
        ("requests.exceptions", "Timeout"),
    ):
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(kinds)


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def describe_push_failure(e: BaseException, repo_id: str) -> str | None:
    """One line naming the repo and the fix (for ``scripts/push_to_hub.py`` and the trainer's
    push warnings), or None for an error no push is expected to raise."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, hf_errors.OfflineModeIsEnabled) or (
        hf_constants.HF_HUB_OFFLINE and isinstance(e, network_errors())
    ):
        flag = "HF_HUB_OFFLINE"
        if os.environ.get("HF_HUB_OFFLINE") is None and os.environ.get("TRANSFORMERS_OFFLINE"):
            flag = "TRANSFORMERS_OFFLINE"
        return (
            f"cannot push to {repo_id}: the Hub is offline ({flag}=1 is set); unset {flag} "
            "on a machine with network and run this again."
        )
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        return (
            f"{repo_id} was not found on the Hub, or this token cannot see it: check --repo-id "
            f"(namespace/name, a namespace you may write to) and log in with {LOGIN}."
        )
    if status == 401 or isinstance(e, hf_errors.LocalTokenNotFoundError):
        return (
            f"the Hub refused {repo_id} (HTTP 401: not logged in, or the token is invalid or "
            f"expired); log in with {LOGIN}."
        )
    if status == 403:
        return (
            f"the Hub refused to write to {repo_id} (HTTP 403: this token has no write access "
            f"to it); use a token with write permission ({LOGIN}) and a namespace you own or "
            "belong to."
        )
    if isinstance(e, hf_errors.HfHubHTTPError):
        return (
            f"pushing to {repo_id} failed: the Hub answered HTTP {status} ({first_line(e)}); "
            "try again later."
        )
    if isinstance(e, PermissionError):
        return (
            f"cannot push to {repo_id}: permission denied on {e.filename or first_line(e)}; "
            "the folder must be readable and writable (the model card is written into it)."
        )
    if isinstance(e, network_errors()):
        return (
            f"cannot push to {repo_id}: the Hub could not be reached ({first_line(e)}); check "
            "the network or proxy (HF_ENDPOINT, HTTPS_PROXY) and run this again."
        )
    if isinstance(e, FileNotFoundError | RuntimeError | ValueError):
        return " ".join(str(e).split())
    return None


def _repo_id_of(url: Any, fallback: str) -> str:
    rid = getattr(url, "repo_id", None)
    return rid if isinstance(rid, str) and rid else fallback


def _escape_glob(path: str) -> str:
    """An fnmatch pattern that matches exactly ``path`` (allow_patterns are globs)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def upload_file_list(folder: Path) -> list[str]:
    """Every regular file under ``folder`` that belongs in the repo, as posix relative paths.

    Hidden files/folders (``.tmp-*``, caches) are skipped, and so are READMEs below the top (the
    stub card peft writes into ``adapter/``): the repo has one card, at its root.
    """
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.name == "README.md" and len(rel.parts) > 1:
            continue
        files.append(rel.as_posix())
    return files


def push_output(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool = True,
    token: str | None = None,
    api: HfApi | None = None,
    adapter_only: bool | None = None,
    *,
    cfg: Any = None,
    dataset_card_url: str | None = None,
    family: str | None = None,
    model_subdir: str = "final",
    commit_message: str | None = None,
    validate: bool = True,
) -> Any:
    """Push a finished run: the model folder, its model card, training config and eval results.

    Uploads ``output_dir/<model_subdir>`` (``final/``) as it is, or only ``final/adapter/`` for
    an adapter-only LoRA run (``adapter_only`` defaults to ``use_lora and not merge_lora`` of
    the run's config); the config and eval results are copied into the adapter folder first so
    the repo and the folder match. The card is written as README.md into the uploaded folder.
    Returns what ``HfApi.upload_folder`` returns (the commit info).
    """
    out = Path(output_dir)
    model_dir = out / model_subdir
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} does not exist; has the run finished?")
    c = _cfg_dict(cfg) if cfg is not None else load_run_config(out, model_subdir)
    if adapter_only is None:
        adapter_only = bool(c.get("use_lora")) and not c.get("merge_lora")
    src = model_dir / "adapter" if adapter_only else model_dir
    if adapter_only:
        if not (src / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{src} holds no peft adapter (adapter_config.json).")
        for name in ("training_config.yaml", "eval_results.json"):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, src / name)
    elif not (src / "config.json").is_file():
        raise FileNotFoundError(
            f"{src} holds no model (config.json); for a LoRA run without merge_lora push the "
            "adapter (adapter_only=True)."
        )
    if not (src / "training_config.yaml").is_file():
        (src / "training_config.yaml").write_text(yaml.safe_dump(c, sort_keys=False))

    card = make_model_card(
        out,
        c,
        None,
        family or infer_family(c, model_dir),
        dataset_card_url,
        repo_id=repo_id,
        adapter_only=adapter_only,
    )
    if validate:
        card.validate()  # the Hub's validator (network); raises ValueError with its message
    card.save(src / "README.md")

    files = upload_file_list(src)
    hub = _make_api(api, token)
    url = hub.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    repo_id = _repo_id_of(url, repo_id)
    logger.info("Pushing %d files from %s to %s: %s", len(files), src, repo_id, files)
    return hub.upload_folder(
        repo_id=repo_id,
        folder_path=str(src),
        repo_type="model",
        allow_patterns=[_escape_glob(f) for f in files],
        commit_message=commit_message
        or f"sam_hf: {'LoRA adapter' if adapter_only else 'model'} from {out.name}",
    )


def push_dataset(
    dataset_dir: str | os.PathLike,
    repo_id: str,
    private: bool = True,
    token: str | None = None,
    api: HfApi | None = None,
    validate: bool = True,
) -> str:
    """Push a prepared dataset (``save_to_disk`` folder) with its data card.

    The card (README.md, written by the converters) goes up first; ``DatasetDict.push_to_hub``
    then writes Parquet shards and merges its ``dataset_info`` / ``configs`` metadata into that
    card rather than replacing it. Returns the repo id.
    """
    import datasets

    folder = Path(dataset_dir)
    if not (folder / "dataset_dict.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a prepared DatasetDict (no dataset_dict.json); make one with "
            "scripts/prepare_*.py."
        )
    readme = folder / "README.md"
    if not readme.is_file():
        raise FileNotFoundError(
            f"{folder} has no data card (README.md); re-run the prepare script, which writes it."
        )
    card = DatasetCard(readme.read_text(encoding="utf-8"))
    check_card(card)
    if validate:
        card.validate()
    hub = _make_api(api, token)
    url = hub.create_repo(repo_id, private=private, exist_ok=True, repo_type="dataset")
    repo_id = _repo_id_of(url, repo_id)
    hub.upload_file(
        path_or_fileobj=str(readme),
        path_in_repo="README.md",
        repo_id=repo_id,
        repo_type="dataset",
        commit_message="sam_hf: data card",
    )
    dd = datasets.load_from_disk(str(folder))
    logger.info("Pushing dataset %s (%s) to %s", folder, dict(dd.num_rows), repo_id)
    dd.push_to_hub(repo_id, private=private, token=token)
    return repo_id


def dataset_url(repo_id: str) -> str:
    """The Hub page of a dataset repo (what a model card links as the data card)."""
    return f"https://huggingface.co/datasets/{repo_id}"


__all__ = [
    "check_card",
    "dataset_url",
    "load_eval_results",
    "load_run_config",
    "make_model_card",
    "push_dataset",
    "push_output",
    "usage_snippet",
]
