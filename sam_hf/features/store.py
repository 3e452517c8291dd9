"""The cache on disk: per-image feature files, the phrase table, and its in-memory lookup.

Every file is written to a temporary name and renamed into place, so a reader (another rank,
a later run, a run killed mid-fill) never sees half a file; ``complete.json`` marks a folder
whose every variant is written.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sam_hf.features.errors import FeatureCacheError
from sam_hf.features.keys import key_digest

logger = logging.getLogger("sam_hf")


def autocast_context(device: torch.device | str, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` for ``dtype`` on ``device`` (a no-op context for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class EmbeddingCache:
    """One cache folder: per-image, per-flip feature files, written atomically.

    Args:
        root: ``<dataset_path>/.embedding_cache``.
        key: from :func:`~sam_hf.features.keys.cache_key`; the folder is ``root / key_digest(key)``.
    """

    def __init__(self, root: str | os.PathLike, key: dict[str, Any]) -> None:
        self.key = key
        self.dir = Path(root) / key_digest(key)

    def path(self, index: int, flip: bool) -> Path:
        return self.dir / f"{int(index):06d}_{'f' if flip else 'n'}.safetensors"

    def is_complete(self) -> bool:
        return (self.dir / "complete.json").is_file()

    def load(self, index: int, flip: bool) -> list[torch.Tensor]:
        """The feature maps (each ``(C, h, w)``, in the dtype they were computed in) of one
        image variant."""
        path = self.path(index, flip)
        try:
            d = load_file(str(path))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path} is missing from the embedding cache (was the folder pruned while "
                f"training?). Delete {self.dir} to rebuild it."
            ) from None
        return [d[f"level{i}"] for i in range(len(d))]

    def save(self, index: int, flip: bool, feats: Sequence[torch.Tensor]) -> None:
        """Write one variant to a temporary file and rename it into place."""
        path = self.path(index, flip)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tensors = {f"level{i}": f.detach().to("cpu").contiguous() for i, f in enumerate(feats)}
        save_file(tensors, str(tmp))
        os.replace(tmp, path)

    def fill(
        self,
        pixels: Callable[[int], torch.Tensor],
        num_images: int,
        variants: Sequence[bool],
        encode: Callable[[torch.Tensor], list[torch.Tensor]],
        device: torch.device | str = "cpu",
        autocast: torch.dtype | None = None,
    ) -> int:
        """Compute and store every missing ``(index, flip)`` variant; returns how many.

        ``pixels(i)`` gives image ``i``'s unaugmented ``(3, R, R)`` input; the flipped variant
        is its mirror (flipping commutes with the per-channel normalisation, so this is
        bit-for-bit the pixels an augmented sample gets). ``encode`` maps a ``(1, 3, R, R)``
        batch to the feature maps; it runs under ``autocast`` (the run's mixed precision) so
        the stored features are the ones an uncached forward computes. Images are encoded one
        at a time so a feature never depends on which other images shared its batch.
        """
        if self.is_complete():
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.is_file():
            tmp = key_file.with_name(f".tmp-{os.getpid()}-key.json")
            tmp.write_text(json.dumps(self.key, indent=2, sort_keys=True))
            os.replace(tmp, key_file)
        written = 0
        for i in tqdm(range(num_images), desc="embedding cache", unit="image", leave=False):
            todo = [v for v in variants if not self.path(i, v).is_file()]
            if not todo:
                continue
            x = pixels(i)
            for flip in todo:
                inp = (x.flip(-1) if flip else x)[None].to(device)
                with torch.no_grad(), autocast_context(device, autocast):
                    feats = encode(inp)
                self.save(i, flip, [f[0] for f in feats])
                written += 1
        done = self.dir / "complete.json"
        tmp = done.with_name(f".tmp-{os.getpid()}-complete.json")
        tmp.write_text(json.dumps({"num_images": num_images, "variants": list(variants)}))
        os.replace(tmp, done)
        return written


class PhraseFeatureCache:
    """SAM3's phrase features on disk: one folder per text-encoder key, every phrase once.

    ``features.safetensors`` holds ``rows`` (all phrases' valid token rows, concatenated) and
    ``offsets`` (phrase ``i`` is ``rows[offsets[i]:offsets[i + 1]]``); its metadata lists the
    phrases in order. One file, replaced atomically, so a reader never sees half an update.

    Args:
        root: ``<dataset_path>/.embedding_cache``.
        key: from :func:`~sam_hf.features.keys.text_cache_key`; the folder is ``root / key_digest(key)``.
    """

    FILE = "features.safetensors"

    def __init__(self, root: str | os.PathLike, key: dict[str, Any]) -> None:
        self.key = key
        self.dir = Path(root) / key_digest(key)

    def load(self) -> dict[str, torch.Tensor]:
        """phrase -> its ``(valid tokens, D)`` features (empty when nothing is stored yet)."""
        path = self.dir / self.FILE
        if not path.is_file():
            return {}
        with safe_open(str(path), framework="pt") as f:
            phrases = json.loads(f.metadata()["phrases"])
            rows, offsets = f.get_tensor("rows"), f.get_tensor("offsets").tolist()
        return {p: rows[offsets[i] : offsets[i + 1]] for i, p in enumerate(phrases)}

    def add(
        self,
        known: dict[str, torch.Tensor],
        phrases: Sequence[str],
        tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
        encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        device: torch.device | str = "cpu",
        autocast: torch.dtype | None = None,
        chunk_size: int = 64,
    ) -> dict[str, torch.Tensor]:
        """Encode ``phrases`` (not yet in ``known``, what :meth:`load` gave), store them with
        the rest, and return the whole table.

        ``tokenize(list)`` gives ``input_ids`` / ``attention_mask`` (right-padded, as CLIP's
        tokenizer pads); ``encode(input_ids, attention_mask)`` the ``(Q, L, D)`` features,
        run under ``autocast`` (the run's mixed precision).
        """
        table = dict(known)
        for start in range(0, len(phrases), chunk_size):
            part = list(phrases[start : start + chunk_size])
            tok = tokenize(part)
            mask = tok["attention_mask"]
            lengths = mask.sum(1)
            if not torch.equal(mask.bool(), torch.arange(mask.shape[1]) < lengths[:, None]):
                raise FeatureCacheError(
                    "phrase features need right-padded tokens (valid tokens first)"
                )
            with torch.no_grad(), autocast_context(device, autocast):
                feats = encode(tok["input_ids"].to(device), mask.to(device))
            for q, phrase in enumerate(part):
                table[phrase] = feats[q, : int(lengths[q])].detach().to("cpu").clone()
        order = sorted(table)
        lengths = [table[p].shape[0] for p in order]
        offsets = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.long)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "key.json").write_text(json.dumps(self.key, indent=2, sort_keys=True))
        path = self.dir / self.FILE
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        rows = torch.cat([table[p] for p in order]).contiguous()
        save_file(
            {"rows": rows, "offsets": offsets}, str(tmp), metadata={"phrases": json.dumps(order)}
        )
        os.replace(tmp, path)
        return table


class PhraseFeatures:
    """Phrase -> cached text features in memory, padded into the ``(Q, L, D)`` batch layout.

    A phrase the cache does not hold (the cache is filled with every phrase the query sampler
    can draw from the full-resolution annotations; an object that vanishes when an image is
    downscaled can make a rarer attribute swap possible) is encoded by the frozen text encoder
    on the spot and remembered, so training never stops for it. Padded token rows are zeros:
    SAM3 masks them out of every attention and of the scoring pool.
    """

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = dict(table)
        self.num_computed = 0

    def __len__(self) -> int:
        return len(self.table)

    def __call__(
        self,
        phrases: Sequence[str],
        attention_mask: torch.Tensor,
        compute: Callable[[list[int]], torch.Tensor],
    ) -> torch.Tensor:
        """The ``(Q, L, D)`` features of ``phrases``; ``compute(rows)`` encodes the batch rows
        whose phrase is missing and returns their ``(len(rows), L, D)`` features."""
        lengths = attention_mask.sum(1).tolist()
        todo = [
            q
            for q, p in enumerate(phrases)
            if p not in self.table or self.table[p].shape[0] != lengths[q]
        ]
        if todo:
            if self.num_computed == 0:
                logger.info(
                    "Phrase %r is not in the phrase feature cache: encoding it (and any later "
                    "such phrase) with the frozen text encoder.",
                    phrases[todo[0]],
                )
            with torch.no_grad():
                feats = compute(todo)
            for k, q in enumerate(todo):
                self.table[phrases[q]] = feats[k, : int(lengths[q])].detach().to("cpu").clone()
            self.num_computed += len({phrases[q] for q in todo})
        first = self.table[phrases[0]]
        out = torch.zeros(
            (len(phrases), attention_mask.shape[1], first.shape[-1]), dtype=first.dtype
        )
        for q, p in enumerate(phrases):
            out[q, : int(lengths[q])] = self.table[p]
        return out
