"""Per-instance mask IoU as an `evaluate` metric (DAVIS convention), from ``sam_hf.metrics.masks``.

The Hub's ``mean_iou`` needs a download and is a semantic-segmentation score; this module
loads offline from its folder: ``evaluate.load("<sam_hf>/metrics/modules/mask_iou")``. The
body is :class:`sam_hf.metrics.evaluate_metric.InstanceMaskMetric`.
"""

import evaluate

from sam_hf.metrics import evaluate_metric, masks

_DESCRIPTION = """
Intersection over union of each predicted instance mask with its ground-truth mask,
|P & G| / |P | G|, averaged over instances. Masks are cast to bool (non-zero is
foreground). Two empty masks agree perfectly (IoU 1), as in the DAVIS evaluation.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of 2-D masks (H, W), one per instance; sizes may differ between
        instances but each must equal its reference's.
    references: list of 2-D ground-truth masks, aligned with ``predictions``.
    return_per_example: also return the IoU of every instance (default False).
Returns:
    mean_iou: the mean IoU over instances (NaN when there is none).
    per_example_iou: list of floats, only with ``return_per_example=True``.
Examples:
    >>> metric = evaluate.load("sam_hf/metrics/modules/mask_iou")
    >>> metric.compute(predictions=[[[1, 1], [0, 0]]], references=[[[1, 0], [0, 0]]])
    {'mean_iou': 0.5}
"""

_CITATION = """
@inproceedings{Pont-Tuset_arXiv_2017,
  author = {Jordi Pont-Tuset and Federico Perazzi and Sergi Caelles and Pablo Arbel\\'aez and
            Alexander Sorkine-Hornung and Luc {Van Gool}},
  title = {The 2017 DAVIS Challenge on Video Object Segmentation},
  journal = {arXiv:1704.00675},
  year = {2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MaskIoU(evaluate_metric.InstanceMaskMetric):
    """Mean per-instance mask IoU; see ``sam_hf.metrics.masks.mask_iou``."""

    metric_fn = staticmethod(masks.mask_iou)
    name = "iou"
    description, inputs_description, citation = _DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION
