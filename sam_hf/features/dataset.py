"""The cache as the training module sees it: samples and batches that carry their features.

:class:`CachedEmbeddingDataset` adds each sample's stored features (the flip variant its seed
chose) to what the wrapped dataset returns; :class:`CachedEmbeddingCollator` stacks them in the
order the inner collator kept the images. The training modules then skip the encoder
(``batch["image_embeddings"]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from sam_hf.features.store import EmbeddingCache


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
