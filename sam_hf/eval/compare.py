"""What an evaluation found, and how models compare: per-model results, deltas, the gap.

:class:`ModelEvaluation` holds everything measured for one model; :class:`Evaluation` a whole
run of them on the same images, with the three comparisons the report is about:

* fine-tuned minus baseline, per family and protocol (:meth:`Evaluation.comparisons`);
* SAM2 vs SAM3 on columns that mean the same for both (:meth:`Evaluation.gap_rows`):

  - ``mean_instance_iou``: per ground-truth instance, SAM2's IoU for the prompt taken from
    that instance vs SAM3's IoU of the prediction Hungarian-matched to it from the text (0
    when none is kept) -- :func:`sam_hf.metrics.matching.mean_matched_iou`;
  - ``concept_recall``: share of instances found with IoU >= 0.5, per phrase, averaged over
    phrases (SAM3: :func:`sam_hf.metrics.concepts.concept_recall`; SAM2 with one prompt per
    instance, where "found" is its own mask reaching IoU 0.5, grouped by the same phrases);
  - ``instance_recall``: the same share pooled over all instances.

  The prompts differ (SAM2 and the SAM3 tracker are told *where* each object is; SAM3 only
  *what* to look for), and the report says so next to every number;
* SAM3 tracker minus SAM2 on the very same prompts, with a paired bootstrap interval over
  images (:meth:`Evaluation.prompt_gaps`, :mod:`sam_hf.eval.bootstrap`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam_hf.eval.bootstrap import equal_prompt_gap, gap_pairs
from sam_hf.eval.settings import EvalSettings
from sam_hf.eval.sources import FAMILIES, ModelSource


@dataclass
class ModelEvaluation:
    """Everything measured for one model: metrics, per-instance values, raw records."""

    label: str
    role: str
    source: ModelSource
    resolution: int
    num_parameters: int
    #: protocol -> metric dict (SAM2: point / points3 / box; SAM3: text)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: protocol -> per-image records (SAM2: iou/dice/boundary_f1 + RLE predictions; SAM3: the
    #: Sam3Task records) -- written to OUT/records/<label>.json
    records: dict[str, list[dict]] = field(default_factory=dict)
    #: protocol -> common metrics (mean_instance_iou, concept_recall, instance_recall)
    common: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: protocol -> per-instance IoU values (histograms)
    instance_ious: dict[str, list[float]] = field(default_factory=dict)
    #: protocol -> image_id -> mean IoU of that image's instances (best/worst overlays)
    per_image_iou: dict[str, dict[str, float]] = field(default_factory=dict)
    #: clicks protocol: summary (json) and raw per-object curves
    clicks: dict[str, Any] | None = None
    click_curves: list[list[float]] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.source.family

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "role": self.role,
            "source": self.source.source,
            "kind": self.source.kind,
            "loaded_as": self.source.describe(),
            "resolution": self.resolution,
            "num_parameters": self.num_parameters,
            "metrics": self.metrics,
            "clicks": self.clicks,
            "common": self.common,
            "per_image_iou": self.per_image_iou,
        }


@dataclass
class Evaluation:
    """A finished evaluation: settings, data description, every model's results, notes."""

    mode: str
    data: dict[str, Any]
    settings: EvalSettings
    models: list[ModelEvaluation]
    notes: list[str] = field(default_factory=list)
    image_indices: dict[str, int] = field(default_factory=dict)

    def by_family(self, family: str) -> list[ModelEvaluation]:
        return [m for m in self.models if m.family == family]

    def comparisons(self) -> dict[str, dict[str, Any]]:
        """Fine-tuned minus baseline, per family and protocol (numbers only)."""
        out: dict[str, dict[str, Any]] = {}
        for fam in FAMILIES:
            tuned = [m for m in self.by_family(fam) if m.role == "fine-tuned"]
            base = [m for m in self.by_family(fam) if m.role == "baseline"]
            if not (tuned and base):
                continue
            t, b = tuned[0], base[0]
            delta: dict[str, dict[str, float]] = {}
            for proto, tm in t.metrics.items():
                bm = b.metrics.get(proto, {})
                delta[proto] = {
                    k: float(v) - float(bm[k])
                    for k, v in tm.items()
                    if _is_number(v) and _is_number(bm.get(k)) and not k.startswith("num_")
                }
            if t.clicks and b.clicks:
                delta["clicks"] = {
                    k: float(v) - float(b.clicks[k])
                    for k, v in t.clicks.items()
                    if k.startswith(("NoC", "NoF")) and _is_number(v)
                }
            out[fam] = {"fine_tuned": t.label, "baseline": b.label, "delta": delta}
        return out

    def gap_rows(self) -> list[dict[str, Any]]:
        """The SAM2-vs-SAM3 table: common metrics per model and protocol, with the prompt."""
        rows = []
        for m in self.models:
            for proto, c in m.common.items():
                rows.append(
                    {
                        "model": m.label,
                        "family": m.family,
                        "role": m.role,
                        "protocol": proto,
                        "prompt": self.settings.prompt_label(proto),
                        **c,
                    }
                )
        return rows

    def prompt_gaps(self) -> list[dict[str, Any]]:
        """SAM3 tracker minus SAM2 on the same prompts (baselines with baselines, fine-tunes
        with fine-tunes), per protocol and metric, with the bootstrap interval over images."""
        s = self.settings
        seed = 0 if s.seed is None else int(s.seed)
        return [
            equal_prompt_gap(a, b, s.bootstrap_resamples, seed) for a, b in gap_pairs(self.models)
        ]

    def to_json(self) -> dict[str, Any]:
        return jsonable(
            {
                "mode": self.mode,
                "data": self.data,
                "settings": dataclasses.asdict(self.settings),
                "models": {m.label: m.to_json() for m in self.models},
                "comparisons": self.comparisons(),
                "sam2_vs_sam3": self.gap_rows(),
                "equal_prompt_gap": self.prompt_gaps(),
                "notes": self.notes,
            }
        )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def jsonable(obj: Any) -> Any:
    """Plain JSON: NaN/inf become None (json.dumps would write invalid ``NaN`` tokens)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
