"""Pushes to the Hugging Face Hub: a finished run with its model card, a prepared dataset with
its data card, and a one-line account of any failure.

Two rules shape this module:

* **The token never leaves huggingface_hub.** It comes from ``HF_TOKEN`` or the cached login
  (``hf auth login``), resolved by ``HfApi`` itself; this module never reads, prints, logs or
  writes it (an explicit ``token=`` from Python code is handed straight to ``HfApi``).
* **What is pushed is exactly a local folder.** The card is written into the folder that is
  uploaded (``final/``, or ``final/adapter/`` for an adapter-only run), so the Hub repo and the
  local folder hold the same files and a user can inspect what went up.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import datasets
import yaml
from huggingface_hub import DatasetCard, HfApi, get_token
from huggingface_hub import errors as hf_errors

from sam_hf.hub.cards import (
    cfg_dict,
    check_card,
    infer_family,
    load_run_config,
    make_model_card,
)
from sam_hf.models.loading import first_line, hub_offline, offline_flag

logger = logging.getLogger("sam_hf")

_NO_TOKEN = (
    "No Hugging Face token found. Log in once with `hf auth login` (or `huggingface-cli login`), "
    "or export HF_TOKEN in the environment; sam_hf never takes a token on the command line."
)


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
    if isinstance(e, hf_errors.OfflineModeIsEnabled):
        return "offline"
    if isinstance(e, RuntimeError) and str(e) == _NO_TOKEN:
        return "auth"
    if isinstance(e, hf_errors.HfHubHTTPError):
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


def describe_push_failure(e: BaseException, repo_id: str) -> str | None:
    """One line naming the repo and the fix (for ``scripts/push_to_hub.py`` and the trainer's
    push warnings), or None for an error no push is expected to raise."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, hf_errors.OfflineModeIsEnabled) or (
        hub_offline() and isinstance(e, network_errors())
    ):
        flag = offline_flag()
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
    c = cfg_dict(cfg) if cfg is not None else load_run_config(out, model_subdir)
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
