"""Schema rows -> model-ready samples: decode, squash-resize, augment, all seeded per sample.

Every random choice of a sample (flip, colour jitter, and downstream its prompts and text
queries) is drawn from a generator seeded by ``(seed, epoch, index)`` instead of a global
stream. Dataloader workers, ranks and a resume in the middle of an epoch therefore all see the
same augmentations and prompts for the same sample, which is what makes exact resume cheap.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from sam_hf.data import rle
from sam_hf.data.images import load_image, mask_frame, orient_array, warn_once
from sam_hf.data.schema import attributes_dict


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample in one epoch (stable across processes)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (pixel edges: x2 = last column + 1) of non-empty bool masks (N, H, W)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    h, w = masks.shape[1:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).min(dim=1).values
    y2 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x1 = torch.where(cols, ar_w, w).min(dim=1).values
    x2 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    return torch.stack([x1, y1, x2, y2], dim=1).float()


def _undecoded(hf_dataset: Any) -> Any:
    """``hf_dataset`` with its ``image`` column left encoded, so :func:`read_row_image` (the one
    image reader) decodes it rather than ``datasets``, whose decoding applies EXIF orientation."""
    features = getattr(hf_dataset, "features", None)
    feature = features.get("image") if features is not None else None
    if isinstance(hf_dataset, datasets.Dataset) and isinstance(feature, datasets.Image):
        if feature.decode:
            return hf_dataset.cast_column("image", datasets.Image(decode=False))
    return hf_dataset


def read_row_image(row: dict[str, Any]) -> Image.Image:
    """A schema row's image as 8-bit RGB, on the grid of the row's masks.

    Converted rows are stored upright without EXIF orientation, so this is the stored image.
    Rows written otherwise (an older sam_hf stored EXIF-rotated files as they were) follow the
    rule of :mod:`sam_hf.data.images`: the row's ``width``/``height`` (the masks' size) decide
    whether the orientation is applied; a size that fits neither grid is an error naming the
    image, and an ambiguous one is warned about once.
    """
    name = f"image {row.get('image_id')!r}"
    image, info = load_image(row["image"], name=name, orient=False)
    if not info.moves_pixels:
        return image
    size = (row.get("width"), row.get("height"))
    try:
        frame, ambiguous = mask_frame(info, size)
    except ValueError as e:
        raise ValueError(f"{name}: {e}; convert the dataset again with this sam_hf") from None
    if ambiguous:
        warn_once(
            name,
            f"{name}: EXIF orientation {info.orientation} with stored and displayed sizes both"
            f" {size[0]}x{size[1]}: its masks are taken to follow the stored pixels (convert the"
            " dataset again with this sam_hf to store it upright)",
        )
    if frame == "displayed":
        image = Image.fromarray(orient_array(np.asarray(image), info.orientation))
    return image


class SegmentationDataset(Dataset):
    """Map-style dataset over a schema ``datasets.Dataset`` for both SAM2 and SAM3.

    Resizing is a square "squash" to ``resolution`` x ``resolution``, which is what both
    models' image processors do (no letterboxing), so coordinates scale per axis.
    """

    def __init__(
        self,
        hf_dataset: Any,
        resolution: int,
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
        seed: int,
        train: bool,
        hflip_prob: float = 0.0,
        color_jitter: float = 0.0,
        keep_orig_masks: bool = False,
    ) -> None:
        self.ds = hf_dataset
        self._rows = _undecoded(hf_dataset)
        self.resolution = int(resolution)
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)
        self.seed = int(seed)
        self.train = train
        self.hflip_prob = float(hflip_prob) if train else 0.0
        self.color_jitter = float(color_jitter) if train else 0.0
        self.keep_orig_masks = keep_orig_masks
        self.epoch = 0

    @classmethod
    def with_processor(
        cls, hf_dataset: Any, processor: Any, resolution: int, seed: int, train: bool, **kwargs: Any
    ) -> SegmentationDataset:
        """Normalised the way ``processor`` (a Sam2/Sam3 processor) normalises its images."""
        ip = processor.image_processor
        return cls(
            hf_dataset,
            resolution=resolution,
            image_mean=ip.image_mean,
            image_std=ip.image_std,
            seed=seed,
            train=train,
            **kwargs,
        )

    def set_epoch(self, epoch: int) -> None:
        """Augmentations and prompts of epoch ``e`` depend only on ``(seed, e, index)``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self._rows[int(index)]
        seed = sample_seed(self.seed, self.epoch if self.train else 0, index)
        gen = torch.Generator().manual_seed(seed)
        r = self.resolution

        image = read_row_image(row)
        w0, h0 = image.size
        pixels = TF.pil_to_tensor(image.resize((r, r), Image.BILINEAR)).float() / 255.0

        objects = [o for o in row["objects"] if not o["iscrowd"]]
        orig = rle.decode_many([o["segmentation"] for o in objects], h0, w0)
        orig_t = torch.from_numpy(orig)
        if orig_t.shape[0]:
            masks = F.interpolate(orig_t[None].to(torch.uint8), size=(r, r), mode="nearest-exact")[
                0
            ].bool()
        else:
            masks = torch.zeros((0, r, r), dtype=torch.bool)

        # Draw every random number in a fixed order, whether used or not, so a change of
        # hflip_prob does not shift the jitter factors (and vice versa).
        u = torch.rand(4, generator=gen)
        hflip = bool(u[0] < self.hflip_prob)
        if self.color_jitter > 0:
            b, c, s = (1.0 + self.color_jitter * (2 * u[1:] - 1)).tolist()
            pixels = TF.adjust_brightness(pixels, b)
            pixels = TF.adjust_contrast(pixels, c)
            pixels = TF.adjust_saturation(pixels, s).clamp(0, 1)
        if hflip:
            pixels = pixels.flip(-1)
            masks = masks.flip(-1)
            orig_t = orig_t.flip(-1)

        keep = masks.flatten(1).any(dim=1)  # tiny objects can vanish when downscaled
        if self.keep_orig_masks:
            # Evaluation must score every object at full resolution, so a vanished object
            # keeps one pixel at the scaled position of one of its own pixels (for prompts).
            for i in (~keep).nonzero().flatten().tolist():
                ys, xs = orig_t[i].nonzero(as_tuple=True)
                if len(ys):
                    m = len(ys) // 2
                    masks[i, int(ys[m]) * r // h0, int(xs[m]) * r // w0] = True
            keep = masks.flatten(1).any(dim=1)
        keep_idx = keep.nonzero().flatten().tolist()
        masks = masks[keep]
        kept = [objects[i] for i in keep_idx]

        sample = {
            "pixel_values": (pixels - self.mean) / self.std,
            "masks": masks,
            "boxes": masks_to_boxes_xyxy(masks),
            "phrases": [o["noun_phrase"] or o["category"] for o in kept],
            "categories": [o["category"] for o in kept],
            "attributes": [attributes_dict(o["attributes"]) for o in kept],
            "negative_phrases": list(row.get("negative_phrases") or []),
            "image_id": row["image_id"],
            "index": int(index),
            "orig_size": (h0, w0),
            "seed": seed,
            "hflip": hflip,
        }
        if self.keep_orig_masks:
            sample["orig_masks"] = orig_t[keep]
        return sample
