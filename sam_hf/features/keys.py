"""What cached features depend on: the key of a cache folder, and the flip variants to store.

A key is a JSON-able dict of everything the stored features are a function of -- model id and
revision, resolution, normalisation, a hash of the encoder's weights, the split's Arrow
fingerprint, the autocast dtype, library versions -- and its digest names the folder, so any
change of what the features depend on means a new folder and stale features are never read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

#: Bumped when what is stored (or how it is computed) changes, so old folders are not reused.
CACHE_FORMAT = 2
CACHE_DIRNAME = ".embedding_cache"


def weights_hash(module: torch.nn.Module, extra: Sequence[torch.Tensor] = ()) -> str:
    """sha256 of every tensor of ``module``'s state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    items = sorted(module.state_dict().items()) + [(f"extra.{i}", t) for i, t in enumerate(extra)]
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def resolved_model_id(name: str) -> str:
    """A local path made absolute (the same folder under two spellings is one id)."""
    p = Path(str(name)).expanduser()
    return str(p.resolve()) if p.exists() else str(name)


def cache_key(
    *,
    family: str,
    model_id: str,
    revision: str | None,
    resolution: int,
    weights: str,
    fingerprint: str,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    autocast: torch.dtype | None = None,
) -> dict[str, Any]:
    """Everything the cached image features depend on, as a JSON-able dict."""
    return {
        "format": CACHE_FORMAT,
        "family": family,
        "model_id": model_id,
        "revision": revision or "main",
        "resolution": int(resolution),
        "encoder_weights_sha256": weights,
        "dataset_fingerprint": fingerprint,
        "image_mean": [float(v) for v in image_mean],
        "image_std": [float(v) for v in image_std],
        "autocast": _dtype_name(autocast),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def text_cache_key(
    *,
    model_id: str,
    revision: str | None,
    weights: str,
    tokenizer: str,
    context_length: int,
    autocast: torch.dtype | None = None,
) -> dict[str, Any]:
    """Everything SAM3's cached phrase features depend on (no dataset: a phrase is a phrase)."""
    return {
        "format": CACHE_FORMAT,
        "family": "sam3-text",
        "model_id": model_id,
        "revision": revision or "main",
        "text_weights_sha256": weights,
        "tokenizer": tokenizer,
        "context_length": int(context_length),
        "autocast": _dtype_name(autocast),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def key_digest(key: dict[str, Any]) -> str:
    """The folder name of ``key``: 20 hex digits of the sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def flip_variants(hflip_prob: float) -> tuple[bool, ...]:
    """Which flip variants a split needs: the seeds can only pick those."""
    if hflip_prob <= 0:
        return (False,)
    if hflip_prob >= 1:
        return (True,)
    return (False, True)
