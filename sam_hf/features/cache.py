"""Frozen-encoder embedding cache: compute each image's (and phrase's) features once, train the heads.

When an encoder is frozen (and carries no LoRA) its output for an input never changes, yet an
uncached fine-tune recomputes it every epoch -- and the image encoder is most of SAM's compute.
This module stores the features on disk beside the Arrow data and feeds them to the training
module instead of the pixels (and, for SAM3, instead of running the text encoder).

What is cached:

- SAM2: the three FPN feature maps of ``Sam2Model.vision_encoder`` with the frozen
  ``no_memory_embedding`` added to the lowest-resolution one, i.e. everything
  :meth:`~sam_hf.models.sam2.Sam2ForTraining.image_embeddings` computes *before* the mask
  decoder's trainable ``conv_s0``/``conv_s1`` projections.
- SAM3 images: the four FPN maps of ``Sam3Model.vision_encoder`` (``fpn_hidden_states``); the
  sine position encodings are recomputed from their shapes and the ViT's ``last_hidden_state``,
  which ``Sam3Model`` does not read, is not stored.
- SAM3 phrases (:class:`PhraseFeatureCache`): ``get_text_features(...).pooler_output`` (CLIP
  text encoder + ``text_projection``) of each distinct phrase, its valid token rows only; padded
  rows are masked everywhere downstream and are fed as zeros.

Features are stored exactly as the encoder produced them -- float32 in an fp32 run; under
``mixed_precision: bf16`` the cache is filled under the same autocast, so a cached run sees the
very numbers an uncached run computes, and the files are half the size.

Where: ``<dataset_path>/.embedding_cache/<key>/`` with one safetensors file per image and flip
variant (``000012_n.safetensors`` / ``000012_f.safetensors``), ``key.json`` saying what the key
was made of, and ``complete.json`` once every file is written. The key is a hash of the model
id and revision, the resolution, the image normalisation, a hash of the encoder's weights
(so another checkpoint, a different random init, ``init_from`` or a fine-tuned encoder never
reuse features), the split's Arrow fingerprint (another subset or edit of the data gets its own
folder), the autocast dtype and the library versions. Any change of key means a new folder; old
folders are not touched (delete ``.embedding_cache`` to reclaim the disk). Phrase features are
keyed by the text encoder's weights and the tokenizer, not by the data, so one folder serves
every split.

Augmentation: a horizontal flip is decided per sample by its seed, so the cache holds the
unflipped and (when ``hflip_prob > 0``) the flipped features of every image and the dataset
picks the variant the seed chose. Colour jitter changes the pixels every epoch and cannot be
cached: ``cache_embeddings: auto`` then trains uncached, ``true`` is a config error.

Size per image variant in float32 (half under bf16): SAM2's FPN has 256 channels at 1/4, 1/8
and 1/16 of the input, about 88 MB at 1024 px (22 MB at 512); SAM3's at 4x, 2x, 1x and 0.5x of
the 72 x 72 token grid at 1008 px is about 113 MB. A phrase takes about 1 KB per token.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from sam_hf.config.args import ConfigError

logger = logging.getLogger("sam_hf")

#: Bumped when what is stored (or how it is computed) changes, so old folders are not reused.
CACHE_FORMAT = 2
CACHE_DIRNAME = ".embedding_cache"
MODES = ("auto", "true", "false")
#: Module names of the image encoders that a LoRA pattern could target (for validation before
#: the model exists; the built model is checked again with its real parameters).
_ENCODER_PROBE_NAMES = {
    "sam2": (
        "vision_encoder.backbone.blocks.0.attn.qkv",
        "vision_encoder.backbone.blocks.0.attn.proj",
        "vision_encoder.backbone.blocks.0.mlp.layers.0",
        "vision_encoder.backbone.patch_embed.projection",
        "vision_encoder.neck.convs.0",
    ),
    "sam3": (
        "vision_encoder.backbone.layers.0.attention.q_proj",
        "vision_encoder.backbone.layers.0.attention.o_proj",
        "vision_encoder.backbone.layers.0.mlp.fc1",
        "vision_encoder.backbone.embeddings.patch_embeddings.projection",
        "vision_encoder.neck.fpn_layers.0.proj1",
    ),
}
#: The same for SAM3's text side (the CLIP text encoder and its projection to the DETR width).
_TEXT_PROBE_NAMES = (
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    "text_encoder.text_model.encoder.layers.0.self_attn.out_proj",
    "text_encoder.text_model.encoder.layers.0.mlp.fc1",
    "text_encoder.text_model.embeddings.token_embedding",
    "text_projection",
)
#: The config flag that freezes the cached image encoder, per family.
_FREEZE_FLAG = {"sam2": "freeze_image_encoder", "sam3": "freeze_vision_encoder"}


# ------------------------------------------------------------------------------ decision


def cache_mode(cfg: Any) -> str:
    """``cfg.cache_embeddings`` normalised to ``auto`` / ``true`` / ``false`` (or an error)."""
    raw = getattr(cfg, "cache_embeddings", "auto")
    mode = str(raw).strip().lower()
    if mode not in MODES:
        raise ConfigError(f"cache_embeddings: {raw!r} is not allowed; choose auto, true or false.")
    return mode


def _family(cfg: Any) -> str:
    return "sam3" if getattr(cfg, "family", "sam2") == "sam3" else "sam2"


def _lora_targets(cfg: Any, group: str, probes: Sequence[str]) -> bool:
    if not getattr(cfg, "use_lora", False):
        return False
    regex = getattr(cfg, "lora_target_regex", None)
    if regex:
        try:
            pattern = re.compile(regex)
        except re.error:
            return False  # the LoRA validation reports the bad pattern itself
        return any(pattern.fullmatch(name) for name in probes)
    return group in (getattr(cfg, "lora_target_groups", None) or ())


def lora_targets_encoder(cfg: Any) -> bool:
    """Whether ``cfg``'s LoRA settings put adapters into the image encoder."""
    return _lora_targets(cfg, "vision_encoder", _ENCODER_PROBE_NAMES[_family(cfg)])


def cache_blockers(cfg: Any) -> list[str]:
    """Why the image encoder's features cannot be cached under ``cfg`` (empty: they can)."""
    reasons = []
    flag = _FREEZE_FLAG[_family(cfg)]
    if not getattr(cfg, flag, False):
        reasons.append(f"{flag} is false: the encoder trains, so its features change every step")
    if lora_targets_encoder(cfg):
        reasons.append(
            "LoRA on an encoder whose features are cached: use_lora with vision_encoder in "
            "lora_target_groups (or a lora_target_regex matching vision_encoder modules) trains "
            "the encoder"
        )
    if getattr(cfg, "color_jitter", 0.0) > 0:
        reasons.append(
            f"color_jitter {cfg.color_jitter} > 0 changes the pixels every epoch, so the "
            "features do too (set color_jitter: 0 to cache; hflip_prob is fine)"
        )
    return reasons


def text_cache_blockers(cfg: Any) -> list[str]:
    """Why SAM3's phrase features cannot be cached under ``cfg`` (empty: they can)."""
    reasons = []
    if not getattr(cfg, "freeze_text_encoder", False):
        reasons.append("freeze_text_encoder is false: the text encoder trains")
    if _lora_targets(cfg, "text_encoder", _TEXT_PROBE_NAMES):
        reasons.append("LoRA adapters in the text encoder train it")
    return reasons


def check_config(cfg: Any) -> None:
    """Config validation: ``cache_embeddings: true`` where caching is impossible is an error.

    ``true`` is about the image features (the expensive part). SAM3's phrase features follow
    along whenever the text encoder is frozen, under ``auto`` and ``true`` alike.
    """
    if cache_mode(cfg) == "true":
        blockers = cache_blockers(cfg)
        if blockers:
            raise ConfigError(
                "cache_embeddings: true, but the encoder's features cannot be cached: "
                + "; ".join(blockers)
                + ". Set cache_embeddings: auto (or false) to train without the cache."
            )


def image_cache_parts(model: torch.nn.Module) -> list[Any]:
    """What the cached image features are a function of: the vision encoder, then any loose
    parameters -- SAM2 adds its ``no_memory_embedding`` to the features; SAM3's features are
    the vision encoder's output alone."""
    parts: list[Any] = [model.vision_encoder]
    extra = getattr(model, "no_memory_embedding", None)
    if isinstance(extra, torch.Tensor):
        parts.append(extra)
    return parts


def encoder_is_trainable(model: torch.nn.Module) -> bool:
    """Whether any parameter feeding the cached image features gets gradients (LoRA included)."""
    encoder, *extra = image_cache_parts(model)
    return any(p.requires_grad for p in [*encoder.parameters(), *extra])


def check_encoder_frozen(model: torch.nn.Module) -> None:
    """Raise when a batch carries cached image features but the encoder could train: the
    cached features would stand in for it, and it would silently not train."""
    if torch.is_grad_enabled() and encoder_is_trainable(model):
        raise RuntimeError(
            "The batch carries cached image embeddings, but the image encoder is trainable: it "
            "would silently not train. Freeze it or turn the cache off."
        )


def text_encoder_is_trainable(model: torch.nn.Module) -> bool:
    """Whether SAM3's text encoder or its projection gets gradients (LoRA included)."""
    return any(
        p.requires_grad for m in (model.text_encoder, model.text_projection) for p in m.parameters()
    )


def use_cache(cfg: Any, model: torch.nn.Module | None = None) -> bool:
    """Decide (and log) whether this run trains from cached image features.

    ``model`` (the built Sam2Model / Sam3Model, possibly peft-wrapped) is checked for trainable
    encoder parameters too, which catches a LoRA pattern the config-time check could not see.
    """
    mode = cache_mode(cfg)
    if mode == "false":
        return False
    blockers = cache_blockers(cfg)
    if not blockers and model is not None and encoder_is_trainable(model):
        blockers = ["the built model's image encoder has trainable parameters (LoRA?)"]
    if blockers and mode == "true":
        raise ConfigError(
            "cache_embeddings: true, but the encoder's features cannot be cached: "
            + "; ".join(blockers)
            + "."
        )
    if blockers:
        logger.info("Embedding cache off (cache_embeddings: auto): %s.", "; ".join(blockers))
        return False
    return True


def use_text_cache(cfg: Any, model: torch.nn.Module | None = None) -> bool:
    """Decide (and log) whether SAM3 reads its phrase features from the cache.

    On whenever ``cache_embeddings`` is not ``false`` and the text side is frozen: the features
    are small and a frozen text encoder gives every phrase the same features forever.
    """
    if cache_mode(cfg) == "false":
        return False
    blockers = text_cache_blockers(cfg)
    if not blockers and model is not None and text_encoder_is_trainable(model):
        blockers = ["the built model's text encoder has trainable parameters (LoRA?)"]
    if blockers:
        logger.info("Phrase feature cache off: %s.", "; ".join(blockers))
        return False
    return True


def autocast_dtype(cfg: Any) -> torch.dtype | None:
    """The autocast dtype the run's forward uses (None in float32), which the cache fills under."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        str(getattr(cfg, "mixed_precision", "no"))
    )


def autocast_context(device: torch.device | str, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` for ``dtype`` on ``device`` (a no-op context for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# ----------------------------------------------------------------------------------- key


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
    import transformers

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
    import transformers

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


# ------------------------------------------------------------------------------- storage


class EmbeddingCache:
    """One cache folder: per-image, per-flip feature files, written atomically.

    Args:
        root: ``<dataset_path>/.embedding_cache``.
        key: from :func:`cache_key`; the folder is ``root / key_digest(key)``.
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
        key: from :func:`text_cache_key`; the folder is ``root / key_digest(key)``.
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
                raise ValueError("phrase features need right-padded tokens (valid tokens first)")
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


# ------------------------------------------------------------------- dataset and collator


class CachedEmbeddingDataset(Dataset):
    """A :class:`~sam_hf.data.transforms.SegmentationDataset` whose samples also carry their
    cached encoder features (``sample["image_embeddings"]``, the variant the seed flipped to).

    Everything else (``set_epoch``, attributes) is the wrapped dataset's.
    """

    def __init__(self, base: Any, cache: EmbeddingCache) -> None:
        self.base = base
        self.cache = cache

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "cache"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        sample["image_embeddings"] = self.cache.load(int(index), bool(sample.get("hflip", False)))
        return sample


class CachedEmbeddingCollator:
    """Wraps a collator: adds ``batch["image_embeddings"]`` (one ``(B, C, h, w)`` tensor per
    level) for the images the inner collator kept, in ``batch["indices"]`` order (in sample
    order when the inner collator keeps every image and says no ``indices``).

    Picklable (a plain class), so it works in DataLoader worker processes.
    """

    def __init__(self, inner: Callable[[list[dict]], dict]) -> None:
        self.inner = inner

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(samples)
        if not all("image_embeddings" in s for s in samples):
            return batch
        by_index = {int(s["index"]): s["image_embeddings"] for s in samples}
        if "indices" in batch:  # SAM2's collator drops images without objects
            order = [int(i) for i in batch["indices"].tolist()]
        else:  # SAM3's keeps every image, in sample order
            order = [int(s["index"]) for s in samples]
        if order:
            levels = len(by_index[order[0]])
            batch["image_embeddings"] = [
                torch.stack([by_index[i][k] for i in order]) for k in range(levels)
            ]
        return batch
