"""Where a checkpoint comes from: a local folder or a Hub id, checked before any weights load.

SAM2 and SAM3 are built the same way: ``config.json`` is read first (one small file, fetched
from the Hub when the source is an id) and checked to hold a model of the recipe's family, so
a missing folder, an offline or unreachable Hub, a gated or private repo, or a checkpoint of
the other family fails in one actionable line before gigabytes of weights are read. Every such
failure is a :class:`~sam_hf.config.errors.ConfigError`; a model that cannot be had at all is
a :class:`ModelNotFoundError` (also a ``FileNotFoundError``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub import hf_hub_download

from sam_hf.config import ConfigError
from sam_hf.config.validate import (
    MODEL_SOURCES,
    check_checkpoint_family,
    check_model_name,
    family_name,
)

#: File suffixes that make a name a checkpoint path rather than a Hub id.
logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def looks_like_path(name: str) -> bool:
    """A local path rather than a Hub id (``org/name``)."""
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or name.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


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


def first_line(e: BaseException) -> str:
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
            + (f" ({first_line(cause)})" if cause is not None else "")
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
            f"({first_line(e)}); try again later or give a local folder."
        )
    return missing_model_error(
        source,
        family,
        f"not found locally and the Hub could not be reached ({first_line(e)}): check the "
        "network or proxy, or give a local folder",
    )


def revision_kwargs(revision: str | None) -> dict[str, str]:
    """``from_pretrained``'s ``revision`` argument: none for the default branch, so a local
    folder (which has no revisions) loads as well as a Hub id."""
    return {} if revision in (None, "", "main") else {"revision": revision}


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
                f"{path} is not a saved {family_name(family)} model folder: it has no config.json. "
                "Point model_name_or_path at the folder save_pretrained wrote (or a Hub id)."
            )
    else:
        kwargs = revision_kwargs(revision)
        try:
            file = Path(hf_hub_download(source, "config.json", **kwargs))
        except Exception as e:  # noqa: BLE001 - every Hub/network failure becomes one line
            raise _hub_error(source, revision, family, e) from e
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{source}: its config.json does not parse ({first_line(e)}).") from e
    check_checkpoint_family(raw, source, family)
    return raw


def load_error(source: str, family: str, e: Exception) -> ConfigError:
    """A transformers failure to load ``source`` (after its config.json was read) in one line."""
    return ConfigError(
        f"could not load the {family_name(family)} model {source!r}: {first_line(e)}. If this "
        "machine is offline, download it elsewhere (hf download) and give the local folder."
    )


def load_at_resolution(
    source: str,
    resolution: int | None,
    revision: str | None,
    family: str,
    classes: tuple[Any, Any],
    resolution_fns: tuple[Callable[[Any], int], Callable[[Any, int], None]],
    *,
    why: str = "",
) -> tuple[Any, int]:
    """``source``'s model (a Hub id or a saved folder) built for ``resolution`` px.

    The config is read first and its resolution changed before any weights load, so the
    position encodings are built for the new size; the weights are unchanged, and a warning
    compares ``resolution`` with the size the checkpoint says it was trained at (its own
    config.json, which every run writes). ``classes`` is (config class, model class);
    ``resolution_fns`` reads and sets a config's resolution; ``why`` ends the warning.
    Returns the model and that native resolution (the processor is the caller's: families
    rebuild it differently).
    """
    config_cls, model_cls = classes
    get_resolution, set_resolution = resolution_fns
    kwargs = revision_kwargs(revision)
    read_model_config(source, revision, family)  # the family, before any weights are read
    try:
        config = config_cls.from_pretrained(source, **kwargs)
    except OSError as e:
        raise load_error(source, family, e) from e
    native = get_resolution(config)
    res = int(resolution or native)
    if res != native:
        logger.warning(
            "%s was trained at %d px; building it for resolution %d (weights are unchanged%s).",
            source,
            native,
            res,
            why,
        )
        set_resolution(config, res)
    try:
        model = model_cls.from_pretrained(source, config=config, **kwargs)
    except OSError as e:
        raise load_error(source, family, e) from e
    return model, native
