"""Samples -> a SAM2 batch: prompts drawn from each sample's seed, objects padded per image.

Sam2Model takes prompts as ``(images, objects, points, 2)``, so every image of a batch needs
the same number of objects and every object the same number of points. The collator pads both
and says what is real: ``object_valid`` marks real objects (padded ones never reach the loss
or the metrics) and ``num_prompt_points`` the real points of each object (padding carries
transformers' label -10). The training wrapper decodes objects grouped by their real point
count, so padding never enters the model at all.

Coordinates are pixel indices in the ``R x R`` model input, the frame Sam2Model expects
(``Sam2Processor`` would rescale user coordinates from the original image into it; the
samples are already squash-resized, so nothing is rescaled here).

Images without objects cannot be prompted: they are dropped and counted in
``num_skipped_empty``. A batch of only such images comes out with zero images
(``pixel_values`` of shape ``(0, 3, R, R)``); ``Sam2ForTraining.forward`` answers it with a
zero loss that still back-propagates (zeros) into every trainable parameter, so the step and
DDP's gradient sync go on as usual.
"""

from __future__ import annotations

from typing import Any

import torch

from sam_hf.data.prompts import (
    BOX_TOP_LEFT,
    PAD_LABEL,
    PROMPT_TYPES,
    make_generator,
    sample_object_prompt,
    select_objects,
)


class Sam2Collator:
    """Picklable ``collate_fn`` for SAM2 (works in DataLoader worker processes).

    Args:
        cfg: the resolved config; reads ``prompt_type``, ``num_points``, ``box_noise``,
            ``box_noise_max_px``, ``mask_prompt_prob`` and ``max_objects_per_image``.
        train: training draws uniform points, noisy boxes, a random subset of at most
            ``max_objects_per_image`` objects and mask-prompt flags; evaluation keeps every
            object and uses exact prompts (center point, exact box), deterministic per seed.

    Batch keys (B images kept, P = most objects in one of them, n = most prompt points):

    - ``pixel_values`` (B, 3, R, R) float; ``masks`` (B, P, R, R) bool ground truth
    - ``object_valid`` (B, P) bool; ``object_ids`` (B, P) int64 index of the object in its
      sample (-1 for padding), which seeds its correction clicks
    - ``input_points`` (B, P, n, 2) float (x, y) and ``input_labels`` (B, P, n) int64:
      1 positive, 0 negative, 2/3 box corners, -10 padding; ``num_prompt_points`` (B, P)
    - ``input_boxes`` (B, P, 4) xyxy and ``has_box`` (B, P): the box prompts again in the
      ``input_boxes`` form of transformers (zeros where the prompt is points)
    - ``mask_prompt`` (B, P) bool: also feed the previous low-res logits (training only)
    - ``seeds`` (B,) int64, ``indices`` (B,) int64, ``image_ids`` list[str],
      ``orig_sizes`` list[(H, W)], ``orig_masks`` list[(K_i, H, W) bool] when the samples
      carry them (evaluation), in the same object order as ``masks``
    - ``num_objects`` int, ``num_skipped_empty`` int
    """

    def __init__(self, cfg: Any, train: bool) -> None:
        self.train = bool(train)
        self.prompt_type = str(cfg.prompt_type)
        if self.prompt_type not in PROMPT_TYPES:
            raise ValueError(
                f"prompt_type must be one of {PROMPT_TYPES}, got {self.prompt_type!r}."
            )
        if not self.train and self.prompt_type == "mixed":
            # evaluation reports one protocol, not a point/box draw: the centre point(s), the
            # number the before/after tables and evaluate.py's point protocol report
            self.prompt_type = "point"
        self.num_points = int(cfg.num_points)
        if self.num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {self.num_points}.")
        self.box_noise = float(cfg.box_noise)
        self.box_noise_max_px = float(cfg.box_noise_max_px)
        self.mask_prompt_prob = float(cfg.mask_prompt_prob)
        self.max_objects_per_image = int(cfg.max_objects_per_image)

    def _prompts(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Object subset and per-object prompts of one sample, from its seed only."""
        seed = int(sample["seed"])
        masks = sample["masks"].bool()
        n = masks.shape[0]
        if self.train:
            keep = select_objects(
                n, self.max_objects_per_image, make_generator(seed, "sam2-objects")
            )
        else:
            keep = torch.arange(n)
        points, labels, use_mask = [], [], []
        for i in keep.tolist():
            g = make_generator(seed, "sam2-prompt", i)
            p, lab = sample_object_prompt(
                masks[i],
                g,
                prompt_type=self.prompt_type,
                num_points=self.num_points,
                box_noise=self.box_noise,
                box_noise_max_px=self.box_noise_max_px,
                train=self.train,
            )
            points.append(p)
            labels.append(lab)
            # Drawn after the prompt from the same stream; always drawn, so mask_prompt_prob
            # does not change the prompts themselves.
            u = torch.rand(1, generator=g).item()
            use_mask.append(self.train and u < self.mask_prompt_prob)
        return {"keep": keep, "points": points, "labels": labels, "mask_prompt": use_mask}

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("Sam2Collator got an empty list of samples.")
        res = samples[0]["pixel_values"].shape[-1]
        kept = [s for s in samples if s["masks"].shape[0] > 0]
        prompts = [self._prompts(s) for s in kept]
        b = len(kept)
        p_max = max((len(pr["keep"]) for pr in prompts), default=0)
        n_max = max((len(lab) for pr in prompts for lab in pr["labels"]), default=0)

        masks = torch.zeros(b, p_max, res, res, dtype=torch.bool)
        valid = torch.zeros(b, p_max, dtype=torch.bool)
        object_ids = torch.full((b, p_max), -1, dtype=torch.long)
        points = torch.zeros(b, p_max, n_max, 2)
        labels = torch.full((b, p_max, n_max), PAD_LABEL, dtype=torch.long)
        num_points = torch.zeros(b, p_max, dtype=torch.long)
        boxes = torch.zeros(b, p_max, 4)
        has_box = torch.zeros(b, p_max, dtype=torch.bool)
        mask_prompt = torch.zeros(b, p_max, dtype=torch.bool)
        orig_masks = []
        for bi, (s, pr) in enumerate(zip(kept, prompts)):
            keep = pr["keep"]
            k = len(keep)
            masks[bi, :k] = s["masks"][keep].bool()
            valid[bi, :k] = True
            object_ids[bi, :k] = keep
            mask_prompt[bi, :k] = torch.tensor(pr["mask_prompt"], dtype=torch.bool)
            for j, (p, lab) in enumerate(zip(pr["points"], pr["labels"])):
                points[bi, j, : len(lab)] = p
                labels[bi, j, : len(lab)] = lab
                num_points[bi, j] = len(lab)
                if lab[0] == BOX_TOP_LEFT:
                    boxes[bi, j] = p.reshape(4)
                    has_box[bi, j] = True
            if "orig_masks" in s:
                orig_masks.append(s["orig_masks"][keep].bool())

        batch: dict[str, Any] = {
            "pixel_values": torch.stack([s["pixel_values"] for s in kept])
            if kept
            else torch.zeros(0, 3, res, res),
            "masks": masks,
            "object_valid": valid,
            "object_ids": object_ids,
            "input_points": points,
            "input_labels": labels,
            "num_prompt_points": num_points,
            "input_boxes": boxes,
            "has_box": has_box,
            "mask_prompt": mask_prompt,
            "seeds": torch.tensor([int(s["seed"]) for s in kept], dtype=torch.long),
            "indices": torch.tensor([int(s["index"]) for s in kept], dtype=torch.long),
            "image_ids": [s["image_id"] for s in kept],
            "orig_sizes": [tuple(int(v) for v in s["orig_size"]) for s in kept],
            "num_objects": int(valid.sum()),
            "num_skipped_empty": len(samples) - b,
        }
        if kept and len(orig_masks) == b:
            batch["orig_masks"] = orig_masks
        return batch
