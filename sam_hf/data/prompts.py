"""Prompt simulation for SAM2: points, noisy boxes and correction clicks, seeded per sample.

What the official SAM2 training does (``training/model/sam2.py``, ``sam2/modeling/sam2_utils.py``),
and what these samplers reproduce:

- the initial point is drawn uniformly from the object's mask (``get_next_point`` with no
  prediction: the whole mask is the "false negative" region);
- a box prompt is the tight box of the mask, each corner coordinate moved by uniform noise in
  ``[-d, d]`` with ``d = min(noise * side, noise_bound)`` (``noise=0.1``, ``noise_bound=20``
  px, ``dx`` from the width and ``dy`` from the height), clamped into the image; box corners
  are pixel indices (the last row / column of the mask, not one past it) and enter the model
  as two points with labels 2 and 3;
- each correction click is drawn uniformly from the error region between the current
  prediction and the ground truth (false-negative pixel -> positive click, false-positive
  pixel -> negative click); with no error left, a negative click on the background;
- at evaluation the official code uses the "center" click instead (the error pixel farthest
  from the error region's border, RITM-style), which is deterministic.

Multi-point prompts (``num_points`` 3-5) are the SAM1 habit of several positive clicks; they
are drawn uniformly without replacement from the mask. At evaluation, prompts are exact: the
first point is the mask's center point, further points come from the sample's seed, and boxes
carry no noise, so a sample's evaluation prompts depend only on its seed.

Every function takes a ``torch.Generator``; :func:`make_generator` derives independent streams
from the per-sample seed (objects, prompts of object ``i``, correction clicks of object ``i``),
so the prompt of one object does not change when another object is dropped or added.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

PROMPT_TYPES = ("point", "box", "mixed")
POINT_METHODS = ("uniform", "center")

#: Point labels as SAM2's prompt encoder reads them.
NEGATIVE = 0
POSITIVE = 1
BOX_TOP_LEFT = 2
BOX_BOTTOM_RIGHT = 3
#: transformers' padding label: the prompt encoder zeroes these points.
PAD_LABEL = -10


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for the stream named by ``keys`` under ``seed`` (stable across processes).

    String keys are hashed with CRC32 (Python's ``hash`` of a str changes between processes).
    """
    entropy = [int(seed) & (2**64 - 1)]
    for k in keys:
        entropy.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & (2**64 - 1))
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
    return int(state[0]) & (2**63 - 1)


def make_generator(seed: int, *keys: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def _check_mask(mask: torch.Tensor) -> torch.Tensor:
    if mask.dim() != 2:
        raise ValueError(f"expected one (H, W) mask, got shape {tuple(mask.shape)}.")
    mask = mask.bool()
    if not mask.any():
        raise ValueError("cannot sample a prompt from an empty mask.")
    return mask


def mask_to_box(mask: torch.Tensor) -> torch.Tensor:
    """(4,) float ``[x_min, y_min, x_max, y_max]``: inclusive pixel indices of a non-empty mask."""
    mask = _check_mask(mask)
    ys = mask.any(1).nonzero().squeeze(1)
    xs = mask.any(0).nonzero().squeeze(1)
    return torch.stack([xs[0], ys[0], xs[-1], ys[-1]]).float()


def _deepest(region: np.ndarray) -> tuple[int, float]:
    """(flat index, distance) of the region pixel farthest from the region's border.

    Pixels outside the image count as border (the official code pads the map by 1 px before
    its distance transform). The transform runs on the region's bounding box plus a 1-px ring,
    which gives the same distances (any border pixel farther out is farther away than the
    ring) at a fraction of the cost on large images. Ties go to the first pixel in row-major
    order, as ``np.argmax`` in the official code. An empty region gives ``(0, 0.0)``.
    """
    rows, cols = np.any(region, axis=1), np.any(region, axis=0)
    if not rows.any():
        return 0, 0.0
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    crop = np.pad(region[y0 : y1 + 1, x0 : x1 + 1], 1)
    dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1]
    k = int(np.argmax(dist))
    cy, cx = divmod(k, dist.shape[1])
    return (int(y0) + cy) * region.shape[1] + int(x0) + cx, float(dist.flat[k])


def _center_index(region: np.ndarray) -> int:
    """Flat index of the region pixel farthest from the region's border (see :func:`_deepest`)."""
    return _deepest(region)[0]


def _uniform_indices(flat_idx: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` entries of ``flat_idx`` uniformly, without replacement while there are enough."""
    n = flat_idx.numel()
    if k == 1:
        return flat_idx[torch.randint(n, (1,), generator=generator)]
    sel = torch.multinomial(torch.ones(n), k, replacement=n < k, generator=generator)
    return flat_idx[sel]


def sample_points(
    mask: torch.Tensor, num_points: int, generator: torch.Generator, method: str = "uniform"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_points`` positive clicks inside ``mask``.

    Args:
        mask: (H, W) non-empty mask.
        num_points: clicks to draw (>= 1).
        method: ``"uniform"`` (training) draws all clicks uniformly without replacement;
            ``"center"`` (evaluation) puts the first click on the mask pixel farthest from the
            mask border and draws the rest uniformly from the other pixels.

    Returns:
        ``points`` (k, 2) float ``(x, y)`` pixel indices and ``labels`` (k,) int64 (all 1).
    """
    mask = _check_mask(mask)
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}.")
    if method not in POINT_METHODS:
        raise ValueError(f"method must be one of {POINT_METHODS}, got {method!r}.")
    h, w = mask.shape
    flat = mask.flatten()
    if method == "center":
        first = _center_index(mask.cpu().numpy())
        chosen = [torch.tensor([first])]
        if num_points > 1:
            rest = flat.clone()
            rest[first] = False
            pool = rest.nonzero().squeeze(1) if rest.any() else torch.tensor([first])
            chosen.append(_uniform_indices(pool, num_points - 1, generator))
        idx = torch.cat(chosen)
    else:
        idx = _uniform_indices(flat.nonzero().squeeze(1), num_points, generator)
    points = torch.stack([idx % w, idx // w], dim=1).float()
    return points, torch.full((idx.numel(),), POSITIVE, dtype=torch.long)


def sample_box(
    mask: torch.Tensor,
    generator: torch.Generator,
    noise: float = 0.1,
    noise_max_px: float = 20.0,
) -> torch.Tensor:
    """The mask's tight box with the official SAM2 corner noise; (4,) float xyxy pixel indices.

    Each of ``x_min, x_max`` moves by ``U(-dx, dx)`` and each of ``y_min, y_max`` by
    ``U(-dy, dy)`` with ``dx = min(noise * width, noise_max_px)`` (``dy`` from the height),
    then the box is clamped to ``[0, W-1] x [0, H-1]``. ``noise=0`` gives the exact box. Since
    every corner moves by at most 10 % of the side, the box cannot turn inside out.
    """
    box = mask_to_box(mask)
    if noise < 0 or noise_max_px < 0:
        raise ValueError("box noise and its cap must be >= 0.")
    if noise > 0:
        h, w = mask.shape
        bw, bh = box[2] - box[0], box[3] - box[1]
        dx = torch.clamp(bw * noise, max=noise_max_px)
        dy = torch.clamp(bh * noise, max=noise_max_px)
        u = 2 * torch.rand(4, generator=generator) - 1
        box = box + u * torch.stack([dx, dy, dx, dy])
        box = torch.minimum(box.clamp(min=0), torch.tensor([w - 1, h - 1, w - 1, h - 1]).float())
    return box


def box_to_points(box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A box as SAM2 encodes it: two corner points with labels 2 (top-left), 3 (bottom-right).

    transformers' ``input_boxes`` path embeds exactly these two tokens (plus a padding token),
    so the point form lets a box and later correction clicks share one prompt sequence, as in
    the official training code.
    """
    return box.reshape(2, 2).float(), torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT])


def sample_object_prompt(
    mask: torch.Tensor,
    generator: torch.Generator,
    *,
    prompt_type: str = "point",
    num_points: int = 1,
    box_noise: float = 0.1,
    box_noise_max_px: float = 20.0,
    train: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial prompt of one object: ``points`` (n, 2) float and ``labels`` (n,) int64.

    ``prompt_type`` ``"mixed"`` draws point or box with probability 0.5 each (from
    ``generator``, so evaluation is deterministic too). Training: uniform points and noisy
    boxes; evaluation: center point (+ seeded extra points) and exact boxes.
    """
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f"prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}.")
    if prompt_type == "mixed":
        prompt_type = "box" if torch.rand(1, generator=generator).item() < 0.5 else "point"
    if prompt_type == "box":
        box = sample_box(
            mask, generator, noise=box_noise if train else 0.0, noise_max_px=box_noise_max_px
        )
        return box_to_points(box)
    return sample_points(mask, num_points, generator, method="uniform" if train else "center")


def select_objects(num_objects: int, max_objects: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (sorted) of a uniform random subset of at most ``max_objects`` objects."""
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}.")
    if num_objects <= max_objects:
        return torch.arange(num_objects)
    return torch.randperm(num_objects, generator=generator)[:max_objects].sort().values


def _drop_predictions(
    pred: torch.Tensor, generators: Sequence[torch.Generator], gt_prob: float
) -> torch.Tensor:
    """(N, P) predictions with those of a ``gt_prob`` fraction of objects (one draw each from
    its generator, only when ``gt_prob > 0``) emptied: their click then comes from the ground
    truth alone."""
    if not 0.0 <= gt_prob <= 1.0:
        raise ValueError(f"gt_prob must be within [0, 1], got {gt_prob}.")
    if gt_prob == 0:
        return pred
    from_gt = torch.tensor([torch.rand(1, generator=g).item() < gt_prob for g in generators])
    return pred & ~from_gt.to(pred.device)[:, None]


def sample_correction_clicks(
    pred_masks: torch.Tensor,
    gt_masks: torch.Tensor,
    generators: Sequence[torch.Generator],
    method: str = "uniform",
    gt_prob: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One correction click per object from the error region of its current prediction.

    Args:
        pred_masks: (N, H, W) bool predictions (``logits > 0``), on any device.
        gt_masks: (N, H, W) bool ground truth.
        generators: one CPU generator per object (only ``"uniform"`` draws from them).
        method: ``"uniform"`` (training): any error pixel with equal probability, i.e. from
            the union of false negatives and false positives; ``"center"`` (evaluation): the
            pixel deepest inside the false-negative or the false-positive region, whichever is
            deeper (ties -> negative click, as the official code).
        gt_prob: with this probability (one draw per object from its generator, made before
            the click's own draw and only when ``gt_prob > 0``) the object's prediction is
            ignored and the click drawn from the ground truth alone, as if nothing were
            predicted -- the official ``prob_to_sample_from_gt_for_train`` (there one draw
            per step for the whole batch; the marginal probability is the same).

    With no error left the click goes to the background (negative) -- the official rule --
    and if the object fills the whole image, inside the object (positive; the official code
    would place a negative click inside the object there).

    Returns:
        ``points`` (N, 2) float ``(x, y)`` and ``labels`` (N,) int64, on ``pred_masks.device``.
        The label is always the ground truth at the click: 1 inside the object, 0 outside.
    """
    if pred_masks.shape != gt_masks.shape or pred_masks.dim() != 3:
        raise ValueError(
            f"pred_masks and gt_masks must both be (N, H, W); got {tuple(pred_masks.shape)} "
            f"and {tuple(gt_masks.shape)}."
        )
    if len(generators) != pred_masks.shape[0]:
        raise ValueError(
            f"need one generator per object ({pred_masks.shape[0]}), got {len(generators)}."
        )
    if method not in POINT_METHODS:
        raise ValueError(f"method must be one of {POINT_METHODS}, got {method!r}.")
    n, h, w = pred_masks.shape
    device = pred_masks.device
    if n == 0:
        return torch.zeros(0, 2, device=device), torch.zeros(0, dtype=torch.long, device=device)
    pred = _drop_predictions(pred_masks.bool().flatten(1), generators, gt_prob)
    gt = gt_masks.bool().flatten(1)
    err = pred ^ gt
    has_err = err.any(1, keepdim=True)
    has_bg = (~gt).any(1, keepdim=True)
    # The region each click is drawn from: the errors, else the background, else the object.
    region = torch.where(has_err, err, torch.where(has_bg, ~gt, gt))

    if method == "uniform":
        counts = region.sum(1).cpu()
        ranks = torch.stack(
            [torch.randint(int(c), (1,), generator=g)[0] for c, g in zip(counts, generators)]
        )
        cumsum = region.cumsum(1, dtype=torch.int32)
        idx = torch.searchsorted(cumsum, (ranks + 1).to(device=device, dtype=torch.int32)[:, None])
        idx = idx.squeeze(1).long()
    else:
        fn = (gt & ~pred).view(n, h, w).cpu().numpy()
        fp = (~gt & pred).view(n, h, w).cpu().numpy()
        region_np = region.view(n, h, w).cpu().numpy()
        has_err_np = has_err.squeeze(1).cpu().numpy()
        out = []
        for i in range(n):
            if not has_err_np[i]:
                out.append(_center_index(region_np[i]))
                continue
            i_fn, d_fn = _deepest(fn[i])
            i_fp, d_fp = _deepest(fp[i])
            out.append(i_fn if d_fn > d_fp else i_fp)
        idx = torch.tensor(out, device=device, dtype=torch.long)
    labels = gt.gather(1, idx[:, None]).squeeze(1).long()
    points = torch.stack([idx % w, idx // w], dim=1).float()
    return points, labels


def sample_correction_click(
    pred_mask: torch.Tensor,
    gt_mask: torch.Tensor,
    generator: torch.Generator,
    method: str = "uniform",
) -> tuple[torch.Tensor, int]:
    """One correction click for one (H, W) prediction: ``(point (2,) float (x, y), label)``.

    See :func:`sample_correction_clicks` for the rule.
    """
    pts, labels = sample_correction_clicks(pred_mask[None], gt_mask[None], [generator], method)
    return pts[0], int(labels[0])
