"""Mask and score inputs of the metrics, and the numpy/torch array helpers they share.

Every metric accepts torch tensors, numpy arrays or nested lists. The pixel kernels of
:mod:`sam_hf.metrics.masks` and :mod:`sam_hf.metrics.matching` are written once against
what numpy and torch share, so CPU data runs in numpy (zero-copy views of CPU tensors, see
:func:`as_masks` for the measurements behind that) and data on an accelerator stays there,
in torch: a GPU gives the same exact integer counts, hence the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

#: Exact 0/1 matmuls in float32 hold while the number of summed pixels stays below 2**24.
FLOAT32_EXACT = 1 << 24
#: Elements processed per chunk by the pixel kernels: working sets of about 1 MB stay in
#: the CPU caches (whole 20 x 720 x 1280 batches ran ~3x slower here).
CACHE_BUDGET = 1 << 20


def as_masks(x: Any, name: str, empty_ok: bool = False) -> Any:
    """(N, H, W) masks as bool: numpy for CPU tensors, arrays and lists; torch elsewhere.

    Every pixel kernel of the metrics is written once against what numpy and torch share (slices,
    ``|=``, ``^``, ``xp.bitwise_or(out=)``, ``xp.stack`` ...). CPU data goes through
    numpy -- CPU tensors as zero-copy views: measured on the project's 2-core box, each
    torch CPU op paid ~8-15 ms of OpenMP synchronisation whenever the other core was busy
    (numpy: 0.05-0.1 ms for the same 720x1280 XOR) and its bool reductions were 40-100x
    slower than ``np.count_nonzero``. Tensors on an accelerator stay there, in torch.
    ``empty_ok`` also accepts an empty stack given as shape (0,).
    """
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.bool:
            x = x != 0
        if x.device.type == "cpu":
            x = x.numpy()
    else:
        x = np.asarray(x)
        if x.dtype != bool:
            x = x != 0
    if empty_ok and x.ndim != 3 and math.prod(x.shape) == 0:
        return zeros(x, (0, 0, 0))
    if x.ndim != 3:
        raise ValueError(f"`{name}` must have shape (N, H, W); got {tuple(x.shape)}")
    return x


def device_of(a: Any) -> torch.device:
    return torch.device("cpu") if isinstance(a, np.ndarray) else a.device


def array_module(a: Any) -> Any:
    return np if isinstance(a, np.ndarray) else torch


def same_place(a: Any, b: Any) -> tuple[Any, Any]:
    """Bring two mask arrays to one device (a CPU/numpy one moves to the accelerator)."""
    if isinstance(a, np.ndarray) and isinstance(b, torch.Tensor):
        return torch.from_numpy(a).to(b.device), b
    if isinstance(b, np.ndarray) and isinstance(a, torch.Tensor):
        return a, torch.from_numpy(b).to(a.device)
    if isinstance(a, torch.Tensor) and a.device != b.device:
        raise ValueError(f"masks on different devices: {a.device} and {b.device}")
    return a, b


def pred_and_gt(pred: Any, gt: Any) -> tuple[Any, Any]:
    p, g = same_place(as_masks(pred, "pred"), as_masks(gt, "gt"))
    if p.shape != g.shape:
        raise ValueError(
            f"`pred` and `gt` must have the same shape (N, H, W); got {tuple(p.shape)} "
            f"and {tuple(g.shape)}"
        )
    return p, g


def result_dtype(device: torch.device) -> torch.dtype:
    # float64 so the values equal the numpy references bit for bit; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def to_tensor(a: Any, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a.to(device)


def count_true(x: Any) -> Any:
    """Number of True pixels per instance of a bool (N, ...) array, int64 (N,), same kind."""
    if x.shape[0] == 0:
        return int_zeros(x, 0)
    flat = x.reshape(x.shape[0], -1)
    if isinstance(flat, np.ndarray):
        # count_nonzero over a whole contiguous row is SIMD; with axis= it is ~10x slower
        return np.array([np.count_nonzero(row) for row in flat], dtype=np.int64)
    return flat.sum(1)


def zeros(like: Any, shape: tuple[int, ...]) -> Any:
    if isinstance(like, np.ndarray):
        return np.zeros(shape, dtype=like.dtype)
    return like.new_zeros(shape)


def int_zeros(like: Any, n: int) -> Any:
    if isinstance(like, np.ndarray):
        return np.zeros(n, dtype=np.int64)
    return torch.zeros(n, dtype=torch.int64, device=like.device)


def copy_of(x: Any) -> Any:
    return x.copy() if isinstance(x, np.ndarray) else x.clone()


def nonzero_indices(x: Any) -> list[int]:
    if isinstance(x, np.ndarray):
        return np.flatnonzero(x).tolist()
    return torch.nonzero(x.reshape(-1)).reshape(-1).tolist()


def first_last(any_along: Any) -> tuple[list[int], list[int]]:
    """Index of the first and of the last True along dim 1 of a bool (N, L) array."""
    if isinstance(any_along, np.ndarray):
        first, rev = any_along.argmax(1), any_along[:, ::-1].argmax(1)
    else:
        as_int = any_along.to(torch.uint8)
        first, rev = as_int.argmax(1), as_int.flip(1).argmax(1)
    last = any_along.shape[1] - 1 - rev
    return first.tolist(), last.tolist()


def chunks(n: int, per_item: int, budget: int = CACHE_BUDGET) -> list[slice]:
    """Split range(n) into slices of about ``budget`` elements (at least one item each)."""
    step = max(1, budget // max(1, per_item))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


def as_vector(x: Any) -> np.ndarray:
    """Scores or flags as a 1-D numpy array, dtype kept (float64 scores stay float64)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # exact; numpy has no bfloat16
        x = x.cpu().numpy()
    return np.asarray(x).reshape(-1)


def select(masks: Any, keep: np.ndarray) -> Any:
    if isinstance(masks, np.ndarray):
        return masks[keep]
    return masks[torch.from_numpy(keep).to(masks.device)]
