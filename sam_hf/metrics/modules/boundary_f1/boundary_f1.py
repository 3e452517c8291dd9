"""DAVIS boundary F-measure as an `evaluate` metric, from ``sam_hf.metrics.core.boundary_f1``.

Loads offline from its folder: ``evaluate.load("<sam_hf>/metrics/modules/boundary_f1")``.
"""

import datasets
import evaluate
import numpy as np

from sam_hf.metrics.core import boundary_f1, per_example_metric

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
    >>> metric = evaluate.load("sam_hf/metrics/core/modules/boundary_f1")
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

_MASK = datasets.Sequence(datasets.Sequence(datasets.Value("bool")))


def _as_bool(masks):
    # Arrow refuses a batch that mixes dtypes (a uint8 PNG mask next to a bool prediction);
    # casting here also makes 0/255 or 0/2 label masks mean what the torch metric means.
    return None if masks is None else [np.asarray(m) != 0 for m in masks]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BoundaryF1(evaluate.Metric):
    """Mean per-instance DAVIS boundary F; see ``sam_hf.metrics.core.boundary_f1``."""

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

    def _compute(
        self,
        predictions,
        references,
        bound_th: float = 0.008,
        return_per_example: bool = False,
    ) -> dict:
        values = per_example_metric(boundary_f1, predictions, references, bound_th=bound_th)
        out = {"mean_boundary_f1": float(values.mean()) if values.size else float("nan")}
        if return_per_example:
            out["per_example_boundary_f1"] = values.tolist()
        return out
