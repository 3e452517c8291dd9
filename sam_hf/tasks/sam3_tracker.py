"""SAM3's tracker head (points, boxes, masks) trained as SAM2 is: the same task, another model.

``Sam3TrackerModel`` has Sam2Model's heads under Sam2Model's names, so everything of
:class:`~sam_hf.tasks.sam2.Sam2Task` -- data views, collator, prompt simulation and correction
clicks, the SAM2 loss and presets, the embedding cache, evaluation records -- applies as is;
only the model (:func:`~sam_hf.models.sam3_tracker.build_sam3_tracker`) differs. That is what
makes the equal-prompt SAM2-vs-SAM3 comparison fair: the same prompts reach both models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sam_hf.models.sam3_tracker import build_sam3_tracker
from sam_hf.tasks.base import TransformersTask
from sam_hf.tasks.sam2 import Sam2Task


class Sam3TrackerTask(Sam2Task):
    """SAM3's tracker head with geometric prompts on instance masks."""

    family = "sam3_tracker"
    synthetic_view = "minneapple"

    def build_base(self, cfg: Any) -> tuple[torch.nn.Module, Any]:
        return build_sam3_tracker(cfg)

    def save_pretrained(
        self, module: torch.nn.Module, processor: Any, out_dir: Path, cfg: Any
    ) -> None:
        """The transformers folder (loads with ``Sam3TrackerModel.from_pretrained``)."""
        TransformersTask.save_pretrained(self, module, processor, out_dir, cfg)
