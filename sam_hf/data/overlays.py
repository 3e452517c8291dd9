"""Mask overlays for humans and trackers: predicted vs ground-truth instances on the image.

A metric says *how much* a fine-tune improved; an overlay says *where* it still fails (merged
neighbouring apples, missed small ones, masks bleeding into leaves). At each evaluation the
trainer logs a few validation images through :func:`log_overlays`: wandb receives the raw image
with interactive ``prediction`` / ``ground_truth`` mask layers, TensorBoard and trackio a
rendered ``prediction | ground truth`` panel.

Colours are deterministic per instance index (golden-ratio hue steps), so instance ``k`` has the
same colour in the prediction and in the ground truth panel -- for SAM2, where prediction ``k``
answers the prompt taken from ground-truth object ``k``, matching colours mean matching objects.
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

logger = logging.getLogger("sam_hf")

_GOLDEN = 0.618033988749895
#: Gap between the two panels of :func:`side_by_side`, in pixels.
PANEL_GAP = 4
#: Height of the label band above the panels of :func:`side_by_side`, in pixels.
HEADER_HEIGHT = 14


def instance_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (uint8, shape (n, 3)), the same for the same ``n`` every time."""
    out = np.empty((n, 3), dtype=np.uint8)
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * _GOLDEN) % 1.0, 0.85, 1.0)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def _as_image(image: Any) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"image must be an HxWx3 uint8 array, got shape {img.shape} dtype {img.dtype}."
        )
    return img


def _as_masks(masks: Any, hw: tuple[int, int]) -> np.ndarray:
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {m.shape}.")
    if m.shape[0] and tuple(m.shape[1:]) != tuple(hw):
        raise ValueError(
            f"masks are {m.shape[1]}x{m.shape[2]} but the image is {hw[0]}x{hw[1]}; resize one "
            "to the other first (predictions are at the original resolution)."
        )
    return m.astype(bool, copy=False)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    p = np.pad(mask, 1, constant_values=False)
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def overlay_masks(
    image: np.ndarray,
    masks: np.ndarray,
    color: Sequence[int] | Sequence[Sequence[int]] | None = None,
    alpha: float = 0.5,
    outline: bool = True,
) -> np.ndarray:
    """Blend instance masks onto an image; returns a new HxWx3 uint8 array.

    ``color``: None gives each instance its own colour (:func:`instance_colors`), one RGB triple
    colours every instance alike, or one triple per instance. Inside a mask a pixel becomes
    ``(1 - alpha) * pixel + alpha * colour``; with ``outline`` the mask's boundary pixels take
    the pure colour, so touching instances stay tellable apart. Later instances are drawn on top.
    """
    img = _as_image(image)
    m = _as_masks(masks, img.shape[:2])
    n = m.shape[0]
    if color is None:
        colors = instance_colors(n).astype(np.float32)
    else:
        c = np.asarray(color, dtype=np.float32)
        colors = np.broadcast_to(c, (n, 3)) if c.ndim == 1 else c
        if colors.shape != (n, 3):
            raise ValueError(f"color must be one RGB triple or {n} of them, got {c.shape}.")
    out = img.astype(np.float32)
    for k in range(n):
        mk = m[k]
        if not mk.any():
            continue
        out[mk] = (1.0 - alpha) * out[mk] + alpha * colors[k]
        if outline:
            out[_boundary(mk)] = colors[k]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def label_map(masks: np.ndarray) -> np.ndarray:
    """One (H, W) uint8 map: 0 = background, instance ``k`` -> ``k % 255 + 1`` (later on top).

    wandb mask layers take one integer label per pixel, at most 255.
    """
    m = np.asarray(masks).astype(bool, copy=False)
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {m.shape}.")
    out = np.zeros(m.shape[1:], dtype=np.uint8)
    for k in range(m.shape[0]):
        out[m[k]] = k % 255 + 1
    return out


def side_by_side(
    image: np.ndarray,
    pred_masks: np.ndarray,
    gt_masks: np.ndarray,
    title: str | None = None,
) -> np.ndarray:
    """``prediction | ground truth`` overlays in one image, with a label band on top.

    Shape: ``(HEADER_HEIGHT + H, 2 * W + PANEL_GAP, 3)``; the left panel is
    ``overlay_masks(image, pred_masks)``, the right one ``overlay_masks(image, gt_masks)``.
    """
    img = _as_image(image)
    h, w = img.shape[:2]
    left = overlay_masks(img, pred_masks)
    right = overlay_masks(img, gt_masks)
    canvas = np.full((HEADER_HEIGHT + h, 2 * w + PANEL_GAP, 3), 255, dtype=np.uint8)
    canvas[HEADER_HEIGHT:, :w] = left
    canvas[HEADER_HEIGHT:, w + PANEL_GAP :] = right
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    n_pred, n_gt = _as_masks(pred_masks, (h, w)).shape[0], _as_masks(gt_masks, (h, w)).shape[0]
    prefix = f"{title}: " if title else ""
    draw.text((2, 1), f"{prefix}prediction ({n_pred})", fill=(0, 0, 0))
    draw.text((w + PANEL_GAP + 2, 1), f"ground truth ({n_gt})", fill=(0, 0, 0))
    return np.asarray(pil)


def to_uint8_image(
    pixel_values: Any,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Undo the processor's normalisation of a (3, R, R) tensor; optionally resize to (H, W).

    For logging an evaluation sample next to predictions made at its original size.
    """
    x = np.asarray(pixel_values.detach().cpu() if hasattr(pixel_values, "detach") else pixel_values)
    x = x.astype(np.float32).transpose(1, 2, 0)
    x = x * np.asarray(image_std, dtype=np.float32) + np.asarray(image_mean, dtype=np.float32)
    img = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    if size is not None and tuple(size) != img.shape[:2]:
        img = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))
    return img


def sam2_overlay_items(
    samples: list[dict], preds: list[dict], image_mean: Sequence[float], image_std: Sequence[float]
) -> list[dict]:
    """Images at original size with predicted vs true instance masks (SAM2: prediction ``k``
    answers the prompt of object ``k``), for :func:`log_overlays`."""
    by_id = {p["image_id"]: p for p in preds}
    items = []
    for s in samples:
        p = by_id.get(s["image_id"])
        if p is None:  # an image without objects has no prompts, so no prediction
            continue
        image = to_uint8_image(s["pixel_values"], image_mean, image_std, s["orig_size"])
        items.append(
            {
                "image": image,
                "pred_masks": p["pred_masks"].bool().cpu().numpy(),
                "gt_masks": p["gt_masks"].bool().cpu().numpy(),
                "image_id": s["image_id"],
            }
        )
    return items


def sam3_overlay_items(
    samples: list[dict],
    preds: list[dict],
    image_mean: Sequence[float],
    image_std: Sequence[float],
    score_threshold: float,
) -> list[dict]:
    """Per image: kept predictions (score >= threshold) of its positive phrases vs their
    ground truth, labelled with the phrase, so a wrong concept shows as a wrong label."""
    by_id = {p["image_id"]: p for p in preds}
    items = []
    for s in samples:
        pairs = by_id[s["image_id"]]["pairs"]
        h, w = s["orig_size"]
        pred, pred_labels, gt, gt_labels = [], [], [], []
        for pair in pairs:
            keep = pair["scores"] >= score_threshold
            pred.append(pair["pred"][keep])
            pred_labels += [pair["phrase"]] * int(keep.sum())
            gt.append(pair["gt"])
            gt_labels += [pair["phrase"]] * int(pair["gt"].shape[0])
        empty = torch.zeros((0, h, w), dtype=torch.bool)
        items.append(
            {
                "image": to_uint8_image(s["pixel_values"], image_mean, image_std, (h, w)),
                "pred_masks": torch.cat([empty, *pred]).numpy(),
                "gt_masks": torch.cat([empty, *gt]).numpy(),
                "pred_labels": pred_labels,
                "gt_labels": gt_labels,
                "image_id": s["image_id"],
            }
        )
    return items


def _class_labels(n: int, names: Sequence[str] | None) -> dict[int, str]:
    labels = {}
    for k in range(n):
        label = k % 255 + 1
        name = names[k] if names is not None and k < len(names) else f"object {k}"
        labels[label] = name if label not in labels else f"{labels[label]} / {name}"
    return labels


def _caption(item: dict, i: int) -> str:
    return str(item.get("caption") or item.get("image_id") or f"image {i}")


def _log_wandb(tracker: Any, images: list[dict], step: int, key: str) -> int:
    import wandb

    logged = []
    for i, item in enumerate(images):
        img = _as_image(item["image"])
        pred = _as_masks(item["pred_masks"], img.shape[:2])
        gt = _as_masks(item["gt_masks"], img.shape[:2])
        logged.append(
            wandb.Image(
                img,
                caption=_caption(item, i),
                masks={
                    "prediction": {
                        "mask_data": label_map(pred),
                        "class_labels": _class_labels(len(pred), item.get("pred_labels")),
                    },
                    "ground_truth": {
                        "mask_data": label_map(gt),
                        "class_labels": _class_labels(len(gt), item.get("gt_labels")),
                    },
                },
            )
        )
    tracker.log({key: logged}, step=step)
    return len(logged)


def _log_tensorboard(tracker: Any, images: list[dict], step: int, key: str) -> int:
    writer = tracker.tracker
    for i, item in enumerate(images):
        panel = side_by_side(item["image"], item["pred_masks"], item["gt_masks"], _caption(item, i))
        writer.add_image(f"{key}/{i}", panel, global_step=step, dataformats="HWC")
    writer.flush()
    return len(images)


def _log_trackio(tracker: Any, images: list[dict], step: int, key: str) -> int:
    try:
        import trackio
    except ImportError:
        return 0
    if not hasattr(trackio, "Image"):  # versions before media support
        logger.info("This trackio has no trackio.Image; overlay images are not logged there.")
        return 0
    values = {}
    for i, item in enumerate(images):
        panel = side_by_side(item["image"], item["pred_masks"], item["gt_masks"], _caption(item, i))
        values[f"{key}/{i}"] = trackio.Image(panel, caption=_caption(item, i))
    tracker.log(values, step=step)
    return len(values)


_LOGGERS = {"wandb": _log_wandb, "tensorboard": _log_tensorboard, "trackio": _log_trackio}


def log_overlays(
    accelerator: Any, images: list[dict], step: int, key: str = "eval/overlays"
) -> dict[str, int]:
    """Log validation overlays to every active tracker; returns images logged per tracker.

    Each item of ``images``: ``{"image": HxWx3 uint8, "pred_masks": (N,H,W) bool,
    "gt_masks": (M,H,W) bool}``, optionally ``"caption"`` / ``"image_id"`` and
    ``"pred_labels"`` / ``"gt_labels"`` (names per instance, e.g. SAM3 phrases). Trackers exist
    on the main process only, so other ranks return at once. A failing tracker is reported
    and skipped: a dashboard hiccup must not end a training run.
    """
    counts: dict[str, int] = {}
    if not images:
        return counts
    for tracker in getattr(accelerator, "trackers", []):
        fn = _LOGGERS.get(tracker.name)
        if fn is None:
            logger.debug("No overlay logging for tracker %s.", tracker.name)
            continue
        try:
            counts[tracker.name] = fn(tracker, images, step, key)
        except Exception as e:  # noqa: BLE001 - images are optional, the run is not
            logger.warning("Could not log overlay images to %s: %s", tracker.name, e)
    return counts
