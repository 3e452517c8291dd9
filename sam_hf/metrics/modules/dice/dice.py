"""Per-instance Dice as an `evaluate` metric (DAVIS-style empty rule), from ``sam_hf.metrics.masks``.

Loads offline from its folder: ``evaluate.load("<sam_hf>/metrics/modules/dice")``. The body
is :class:`sam_hf.metrics.evaluate_metric.InstanceMaskMetric`.
"""

import evaluate

from sam_hf.metrics import evaluate_metric, masks

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
    >>> metric = evaluate.load("sam_hf/metrics/modules/dice")
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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Dice(evaluate_metric.InstanceMaskMetric):
    """Mean per-instance Dice; see ``sam_hf.metrics.masks.dice``."""

    metric_fn = staticmethod(masks.dice)
    name = "dice"
    description, inputs_description, citation = _DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION
