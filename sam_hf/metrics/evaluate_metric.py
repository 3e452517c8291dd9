"""The shared body of the ``evaluate`` metric modules in ``sam_hf/metrics/modules/``.

``evaluate.load(folder)`` needs one script per metric folder, so each of ``mask_iou``,
``dice`` and ``boundary_f1`` keeps a small file with its descriptions and citation; what
they do is the same and lives here: inputs are lists of 2-D instance masks cast to bool
(non-zero is foreground) and the score is the mean of the per-instance function of
:mod:`sam_hf.metrics.masks` over all instances (:func:`~sam_hf.metrics.masks.per_example_metric`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import datasets
import evaluate
import numpy as np
import torch

from sam_hf.metrics.masks import per_example_metric

#: One instance mask: a 2-D list of bools (sizes may differ between examples).
MASK_FEATURE = datasets.Sequence(datasets.Sequence(datasets.Value("bool")))


def as_bool_masks(masks: Any) -> list[np.ndarray] | None:
    """Masks cast to bool: non-zero is foreground.

    Arrow refuses a batch that mixes dtypes (a uint8 PNG mask next to a bool prediction);
    casting here also makes 0/255 or 0/2 label masks mean what the torch metric means.
    """
    return None if masks is None else [np.asarray(m) != 0 for m in masks]


class InstanceMaskMetric(evaluate.Metric):
    """Mean of a per-instance mask metric; a subclass names the function and the texts.

    ``compute(predictions=..., references=..., return_per_example=False, **kwargs)`` returns
    ``mean_<name>`` (NaN without instances) and, on request, ``per_example_<name>``; other
    keyword arguments go to the function (``bound_th`` for the boundary F).
    """

    #: The per-instance function (a staticmethod): (pred, gt, **kwargs) -> (N,) tensor.
    metric_fn: ClassVar[Callable[..., torch.Tensor]]
    #: Result keys are ``mean_<name>`` and ``per_example_<name>``.
    name: ClassVar[str]
    description: ClassVar[str]
    inputs_description: ClassVar[str]
    citation: ClassVar[str]

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.description,
            citation=self.citation,
            inputs_description=self.inputs_description,
            features=datasets.Features({"predictions": MASK_FEATURE, "references": MASK_FEATURE}),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of masks (cast to bool: non-zero is foreground)."""
        super().add_batch(
            predictions=as_bool_masks(predictions), references=as_bool_masks(references), **kwargs
        )

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one mask pair (cast to bool: non-zero is foreground)."""
        cast = [None if m is None else np.asarray(m) != 0 for m in (prediction, reference)]
        super().add(prediction=cast[0], reference=cast[1], **kwargs)

    def _compute(self, predictions, references, return_per_example: bool = False, **kwargs):
        values = per_example_metric(self.metric_fn, predictions, references, **kwargs)
        out = {f"mean_{self.name}": float(values.mean()) if values.size else float("nan")}
        if return_per_example:
            out[f"per_example_{self.name}"] = values.tolist()
        return out
