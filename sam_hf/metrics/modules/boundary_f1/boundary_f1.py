"""DAVIS boundary F-measure as an `evaluate` metric, from ``sam_hf.metrics.masks.boundary_f1``.

Loads offline from its folder: ``evaluate.load("<sam_hf>/metrics/modules/boundary_f1")``. The
body is :class:`sam_hf.metrics.evaluate_metric.InstanceMaskMetric`.
"""

import evaluate

from sam_hf.metrics import evaluate_metric, masks

_DESCRIPTION = """
Boundary F-measure of the DAVIS 2017 benchmark per instance, averaged over instances:
the 1-pixel boundaries of prediction and ground truth are matched within a disk-shaped
tolerance of ``bound_th`` (a fraction of the image diagonal when < 1, rounded up to
pixels, else pixels); F = 2PR / (P + R). Both boundaries empty gives 1, exactly one
empty gives 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of 2-D masks (H, W), one per instance; sizes may differ between
        instances but each must equal its reference's.
    references: list of 2-D ground-truth masks, aligned with ``predictions``.
    bound_th: tolerance, default 0.008 (12 px on 1280x720).
    return_per_example: also return the F of every instance (default False).
Returns:
    mean_boundary_f1: the mean boundary F over instances (NaN when there is none).
    per_example_boundary_f1: list of floats, only with ``return_per_example=True``.
Examples:
    >>> metric = evaluate.load("sam_hf/metrics/modules/boundary_f1")
    >>> metric.compute(predictions=[[[1, 1], [0, 0]]], references=[[[1, 1], [0, 0]]])
    {'mean_boundary_f1': 1.0}
"""

_CITATION = """
@inproceedings{Perazzi2016,
  author = {F. Perazzi and J. Pont-Tuset and B. McWilliams and L. {Van Gool} and
            M. Gross and A. Sorkine-Hornung},
  title = {A Benchmark Dataset and Evaluation Methodology for Video Object Segmentation},
  booktitle = {Computer Vision and Pattern Recognition},
  year = {2016}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BoundaryF1(evaluate_metric.InstanceMaskMetric):
    """Mean per-instance DAVIS boundary F; see ``sam_hf.metrics.masks.boundary_f1``."""

    metric_fn = staticmethod(masks.boundary_f1)
    name = "boundary_f1"
    description, inputs_description, citation = _DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION
