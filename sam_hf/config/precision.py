"""The run's mixed-precision mode: the config's ``bf16``/``fp16`` or, unset, the launcher's.

``accelerate launch --mixed_precision bf16`` (or ``accelerate config``) reaches the process
as ``ACCELERATE_MIXED_PRECISION``; the config only overrides it when it sets a flag. One
function decides, so the Accelerator and the embedding cache (filled under the same autocast)
never disagree.
"""

from __future__ import annotations

import os
from typing import Any


def mixed_precision(cfg: Any) -> str:
    """``"bf16"``, ``"fp16"`` or ``"no"``: ``--bf16 true`` / ``--fp16 true`` win; ``--bf16
    false`` with no fp16 forces full precision; both unset defer to Accelerate's setting."""
    if cfg.bf16:
        return "bf16"
    if cfg.fp16:
        return "fp16"
    if cfg.bf16 is False or cfg.fp16 is False:
        return "no"
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
