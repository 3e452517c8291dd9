"""Per-instance mask IoU as an `evaluate` metric (DAVIS convention), from ``sam_hf.metrics.core``.

The Hub's ``mean_iou`` needs a download and is a semantic-segmentation score; this module
loads offline from its folder: ``evaluate.load("<sam_hf>/metrics/modules/mask_iou")``.
"""

import datasets
import evaluate
import numpy as np

from sam_hf.metrics.core import mask_iou, per_example_metric

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
    >>> metric = evaluate.load("sam_hf/metrics/core/modules/mask_iou")
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

_MASK = datasets.Sequence(datasets.Sequence(datasets.Value("bool")))


def _as_bool(masks):
    # Arrow refuses a batch that mixes dtypes (a uint8 PNG mask next to a bool prediction);
    # casting here also makes 0/255 or 0/2 label masks mean what the torch metric means.
    return None if masks is None else [np.asarray(m) != 0 for m in masks]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MaskIoU(evaluate.Metric):
    """Mean per-instance mask IoU; see ``sam_hf.metrics.core.mask_iou``."""

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
        values = per_example_metric(mask_iou, predictions, references)
        out = {"mean_iou": float(values.mean()) if values.size else float("nan")}
        if return_per_example:
            out["per_example_iou"] = values.tolist()
        return out
