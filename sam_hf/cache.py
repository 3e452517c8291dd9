"""Frozen-encoder embedding cache: compute each image's encoder features once, train the heads.

When the image encoder is frozen (and carries no LoRA) its output for an image never changes,
yet an uncached fine-tune recomputes it every epoch -- and the encoder is most of SAM2's
compute. This module stores the features on disk beside the Arrow data and feeds them to the
training module instead of the pixels.

What is cached (SAM2): the three FPN feature maps of ``Sam2Model.vision_encoder`` with the
frozen ``no_memory_embedding`` added to the lowest-resolution one, i.e. everything
:meth:`~sam_hf.models.sam2.Sam2ForTraining.image_embeddings` computes *before* the mask
decoder's trainable ``conv_s0``/``conv_s1`` projections. They are stored in float32, so a
cached run sees the very numbers an uncached fp32 run computes.

Where: ``<dataset_path>/.embedding_cache/<key>/`` with one safetensors file per image and flip
variant (``000012_n.safetensors`` / ``000012_f.safetensors``), ``key.json`` saying what the key
was made of, and ``complete.json`` once every file is written. The key is a hash of the model
id and revision, the resolution, the image normalisation, a hash of the encoder's weights
(so another checkpoint, a different random init, ``init_from`` or a fine-tuned encoder never
reuse features), the split's Arrow fingerprint (another subset or edit of the data gets its own
folder) and the library versions. Any change of key means a new folder; old folders are not
touched (delete ``.embedding_cache`` to reclaim the disk).

Augmentation: a horizontal flip is decided per sample by its seed, so the cache holds the
unflipped and (when ``hflip_prob > 0``) the flipped features of every image and the dataset
picks the variant the seed chose. Colour jitter changes the pixels every epoch and cannot be
cached: ``cache_embeddings: auto`` then trains uncached, ``true`` is a config error.

Size: SAM2's FPN has 256 channels at 1/4, 1/8 and 1/16 of the input, about 88 MB per image
variant at 1024 px (22 MB at 512) in float32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from sam_hf.configs import ConfigError

logger = logging.getLogger("sam_hf")

#: Bumped when what is stored (or how it is computed) changes, so old folders are not reused.
CACHE_FORMAT = 1
CACHE_DIRNAME = ".embedding_cache"
MODES = ("auto", "true", "false")
#: Module names of the SAM2 image encoder that a LoRA pattern could target (for validation
#: before the model exists; the built model is checked again with its real parameters).
_ENCODER_PROBE_NAMES = (
    "vision_encoder.backbone.blocks.0.attn.qkv",
    "vision_encoder.backbone.blocks.0.attn.proj",
    "vision_encoder.backbone.blocks.0.mlp.layers.0",
    "vision_encoder.backbone.patch_embed.projection",
    "vision_encoder.neck.convs.0",
)


# ------------------------------------------------------------------------------ decision


def cache_mode(cfg: Any) -> str:
    """``cfg.cache_embeddings`` normalised to ``auto`` / ``true`` / ``false`` (or an error)."""
    raw = getattr(cfg, "cache_embeddings", "auto")
    mode = str(raw).strip().lower()
    if mode not in MODES:
        raise ConfigError(f"cache_embeddings: {raw!r} is not allowed; choose auto, true or false.")
    return mode


def lora_targets_encoder(cfg: Any) -> bool:
    """Whether ``cfg``'s LoRA settings put adapters into the image encoder."""
    if not getattr(cfg, "use_lora", False):
        return False
    regex = getattr(cfg, "lora_target_regex", None)
    if regex:
        try:
            pattern = re.compile(regex)
        except re.error:
            return False  # the LoRA validation reports the bad pattern itself
        return any(pattern.fullmatch(name) for name in _ENCODER_PROBE_NAMES)
    return "vision_encoder" in (getattr(cfg, "lora_target_groups", None) or ())


def cache_blockers(cfg: Any) -> list[str]:
    """Why the encoder's features cannot be cached under ``cfg`` (empty: they can)."""
    reasons = []
    if not getattr(cfg, "freeze_image_encoder", False):
        reasons.append(
            "freeze_image_encoder is false: the encoder trains, so its features change every step"
        )
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


def check_config(cfg: Any) -> None:
    """Config validation: ``cache_embeddings: true`` where caching is impossible is an error."""
    if cache_mode(cfg) == "true":
        blockers = cache_blockers(cfg)
        if blockers:
            raise ConfigError(
                "cache_embeddings: true, but the encoder's features cannot be cached: "
                + "; ".join(blockers)
                + ". Set cache_embeddings: auto (or false) to train without the cache."
            )


def encoder_is_trainable(model: torch.nn.Module) -> bool:
    """Whether any parameter feeding the cached features gets gradients (LoRA included)."""
    if any(p.requires_grad for p in model.vision_encoder.parameters()):
        return True
    return bool(model.no_memory_embedding.requires_grad)


def use_cache(cfg: Any, model: torch.nn.Module | None = None) -> bool:
    """Decide (and log) whether this run trains from cached features.

    ``model`` (the built Sam2Model, possibly peft-wrapped) is checked for trainable encoder
    parameters too, which catches a LoRA pattern the config-time check could not see.
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
) -> dict[str, Any]:
    """Everything the cached features depend on, as a JSON-able dict."""
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
        "dtype": "float32",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


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
        """The feature maps (each ``(C, h, w)`` float32) of one image variant."""
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
        tensors = {
            f"level{i}": f.detach().to("cpu", torch.float32).contiguous()
            for i, f in enumerate(feats)
        }
        save_file(tensors, str(tmp))
        os.replace(tmp, path)

    def fill(
        self,
        pixels: Callable[[int], torch.Tensor],
        num_images: int,
        variants: Sequence[bool],
        encode: Callable[[torch.Tensor], list[torch.Tensor]],
        device: torch.device | str = "cpu",
    ) -> int:
        """Compute and store every missing ``(index, flip)`` variant; returns how many.

        ``pixels(i)`` gives image ``i``'s unaugmented ``(3, R, R)`` input; the flipped variant
        is its mirror (flipping commutes with the per-channel normalisation, so this is
        bit-for-bit the pixels an augmented sample gets). ``encode`` maps a ``(1, 3, R, R)``
        batch to the feature maps. Images are encoded one at a time so a feature never depends
        on which other images shared its batch.
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
        for i in range(num_images):
            todo = [v for v in variants if not self.path(i, v).is_file()]
            if not todo:
                continue
            x = pixels(i)
            for flip in todo:
                inp = (x.flip(-1) if flip else x)[None].to(device)
                with torch.no_grad():
                    feats = encode(inp)
                self.save(i, flip, [f[0] for f in feats])
                written += 1
        done = self.dir / "complete.json"
        tmp = done.with_name(f".tmp-{os.getpid()}-complete.json")
        tmp.write_text(json.dumps({"num_images": num_images, "variants": list(variants)}))
        os.replace(tmp, done)
        return written


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
    level) for the images the inner collator kept, in ``batch["indices"]`` order.

    Picklable (a plain class), so it works in DataLoader worker processes.
    """

    def __init__(self, inner: Callable[[list[dict]], dict]) -> None:
        self.inner = inner

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(samples)
        if not all("image_embeddings" in s for s in samples):
            return batch
        by_index = {int(s["index"]): s["image_embeddings"] for s in samples}
        order = [int(i) for i in batch["indices"].tolist()]
        if order:
            levels = len(by_index[order[0]])
            batch["image_embeddings"] = [
                torch.stack([by_index[i][k] for i in order]) for k in range(levels)
            ]
        return batch
