"""The optimizer and the learning-rate schedule, as transformers' Trainer builds them.

AdamW (``optim: adamw_torch``) or bitsandbytes' 8-bit AdamW (``adamw_bnb_8bit``) over the
trainable parameters, no weight decay on biases and norms; the schedule is
``transformers.get_scheduler`` counted in optimizer steps of the run. ``reduce_lr_on_plateau``
is the one schedule that steps on evaluations instead (:func:`is_plateau`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from transformers import get_scheduler

from sam_hf.config import ConfigError


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and normalisation weights (1-D tensors).

    Frozen parameters are left out entirely so AdamW allocates no state for them.
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(cfg: Any, module: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (frozen ones get no state), or bitsandbytes' 8-bit
    AdamW for ``optim: adamw_bnb_8bit``.

    The 8-bit variant keeps both moments of every tensor with >= 4096 elements as one byte per
    element plus an fp32 scale per 256-element block (~2 bytes/param instead of AdamW's 8);
    smaller tensors keep fp32 moments. bitsandbytes >= 0.50.2 runs it on CUDA and on CPU.
    """
    groups = param_groups(module, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ConfigError("Every parameter is frozen: unfreeze a part or enable LoRA.")
    kw = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    if cfg.optim == "adamw_bnb_8bit":
        # Its CPU backend warns at import about an optional 4-bit matmul kernel package that
        # the optimizer never uses; keep that misleading "pip install kernels" out of the log.
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ConfigError(
                "optim adamw_bnb_8bit needs bitsandbytes: `pip install 'bitsandbytes>=0.50.2'` "
                "(or set optim: adamw_torch)."
            ) from e
        return bnb.optim.AdamW8bit(groups, **kw)
    return torch.optim.AdamW(groups, **kw)


def warmup_steps(cfg: Any, total_steps: int) -> int:
    """TrainingArguments' ``warmup_steps``: a whole number of steps, or a fraction in (0, 1)
    of all optimizer steps (rounded up, as transformers does)."""
    w = cfg.warmup_steps
    steps = math.ceil(w * total_steps) if 0 < w < 1 else int(w)
    return min(steps, max(total_steps - 1, 0))


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """``transformers.get_scheduler`` with the config's type, warmup and kwargs.

    ``reduce_lr_on_plateau`` watches ``metric_for_best_model``, so its ``mode`` follows
    ``greater_is_better`` unless given (torch's default "min" would cut the LR whenever the
    IoU *improves*).
    """
    kwargs = dict(cfg.lr_scheduler_kwargs)
    if cfg.lr_scheduler_type == "reduce_lr_on_plateau":
        kwargs.setdefault("mode", "max" if cfg.greater_is_better else "min")
    return get_scheduler(
        cfg.lr_scheduler_type,
        optimizer,
        num_warmup_steps=warmup_steps(cfg, total_steps),
        num_training_steps=total_steps,
        scheduler_specific_kwargs=kwargs,
    )


def is_plateau(scheduler: Any) -> bool:
    """Whether ``scheduler`` (bare or wrapped by ``accelerator.prepare``) is ReduceLROnPlateau,
    which steps once per evaluation with the metric instead of once per optimizer step."""
    inner = getattr(scheduler, "scheduler", scheduler)
    return isinstance(inner, torch.optim.lr_scheduler.ReduceLROnPlateau)
