"""Per-instance Dice as an `evaluate` metric (DAVIS-style empty rule), from ``sam_hf.metrics.core``.

Loads offline from its folder: ``evaluate.load("<sam_hf>/metrics/modules/dice")``.
"""

import datasets
import evaluate
import numpy as np

from sam_hf.metrics.core import dice, per_example_metric

_DESCRIPTION = """
Dice coefficient (F1 of pixels) of each predicted instance mask with its ground-truth
mask, 2|P & G| / (|P| + |G|), averaged over instances. Masks are cast to bool. Two empty
masks agree perfectly (Dice 1).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of 2-D masks (H, W), one per instance; sizes may differ between
        instances but each must equal its reference's.
    references: list of 2-D ground-truth masks, aligned with ``predictions``.
    return_per_example: also return the Dice of every instance (default False).
Returns:
    mean_dice: the mean Dice over instances (NaN when there is none).
    per_example_dice: list of floats, only with ``return_per_example=True``.
Examples:
    >>> metric = evaluate.load("sam_hf/metrics/core/modules/dice")
    >>> metric.compute(predictions=[[[1, 1], [0, 0]]], references=[[[1, 0], [0, 0]]])
    {'mean_dice': 0.6666666666666666}
"""

_CITATION = """
@article{dice1945measures,
  title = {Measures of the amount of ecologic association between species},
  author = {Dice, Lee R.},
  journal = {Ecology},
  volume = {26},
  number = {3},
  pages = {297--302},
  year = {1945}
}
"""

_MASK = datasets.Sequence(datasets.Sequence(datasets.Value("bool")))


def _as_bool(masks):
    # Arrow refuses a batch that mixes dtypes (a uint8 PNG mask next to a bool prediction);
    # casting here also makes 0/255 or 0/2 label masks mean what the torch metric means.
    return None if masks is None else [np.asarray(m) != 0 for m in masks]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Dice(evaluate.Metric):
    """Mean per-instance Dice; see ``sam_hf.metrics.core.dice``."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _MASK, "references": _MASK}),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of masks (cast to bool: non-zero is foreground)."""
        super().add_batch(
            predictions=_as_bool(predictions), references=_as_bool(references), **kwargs
        )

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one mask pair (cast to bool: non-zero is foreground)."""
        cast = [None if m is None else np.asarray(m) != 0 for m in (prediction, reference)]
        super().add(prediction=cast[0], reference=cast[1], **kwargs)

    def _compute(self, predictions, references, return_per_example: bool = False) -> dict:
        values = per_example_metric(dice, predictions, references)
        out = {"mean_dice": float(values.mean()) if values.size else float("nan")}
        if return_per_example:
            out["per_example_dice"] = values.tolist()
        return out
