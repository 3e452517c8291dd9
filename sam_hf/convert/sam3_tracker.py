"""The SAM3 tracker's image part (official ``tracker.*``) <-> transformers ``Sam3TrackerModel``.

Companion of :mod:`sam_hf.convert.sam3` (the checkpoint as a whole). The official tracker is a
SAM2-style model: its prompt encoder and mask decoder map one-to-one by :data:`TRACKER_RULES`
(not renames: the four ``point_embeddings.N.weight`` rows are ``point_embed.weight``, and
the one Fourier matrix is both of Sam3TrackerModel's); its vision encoder is the detector's
ViT with the ``sam2_convs`` FPN. The video-memory modules (:data:`TRACKER_MEMORY`) have no
place in Sam3TrackerModel (transformers puts them in its video tracker) and stay in the
converted folder's extra file under their official names.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import Sam3Config, Sam3TrackerConfig, Sam3TrackerModel

from sam_hf.convert.common import ConversionError, KeyMapError, Rule, check_keys, rename
from sam_hf.convert.sam2 import SHARED_MEMORY_KEYS, sam_heads_rules

_TPE = "sam_prompt_encoder"

#: Official tracker key (without ``tracker.``) <-> Sam3TrackerModel key, for the tracker's
#: image part: SAM2's heads rules (the same modules under the same names; the two-way
#: transformer's MLP is ``lin1``/``lin2`` here). Not renames: the four
#: ``point_embeddings.N.weight`` rows are ``point_embed``, and the one Fourier matrix is both
#: of the tracker's (see :func:`tracker_state_dict`).
TRACKER_RULES: list[Rule] = [
    Rule("no_mem_embed", "no_memory_embedding"),
    *sam_heads_rules(mlp=("lin1", "lin2")),
]
#: The tracker's video-memory keys (official names): no place in Sam3TrackerModel, carried.
TRACKER_MEMORY = ("maskmem_backbone.", "transformer.encoder.", *SHARED_MEMORY_KEYS)
_POINTS = _TPE + ".point_embeddings.{}.weight"
_FOURIER = _TPE + ".pe_layer.positional_encoding_gaussian_matrix"
_HF_FOURIER = (
    "prompt_encoder.shared_embedding.positional_embedding",
    "shared_image_embedding.positional_embedding",
)


def tracker_config(config: Sam3Config) -> Sam3TrackerConfig:
    """The Sam3TrackerConfig whose ViT is ``config``'s (prompt encoder / decoder: released)."""
    return Sam3TrackerConfig(vision_config=config.vision_config.to_dict())


def expected_shapes(model_cls: type, config) -> dict[str, tuple[int, ...]]:
    """``model_cls(config)``'s state-dict keys and shapes (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = model_cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_shapes(what: str, state: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple]) -> None:
    bad = [
        f"{k} {tuple(v.shape)} != {shapes[k]}"
        for k, v in state.items()
        if tuple(v.shape) != shapes[k]
    ]
    if bad:
        shown = "; ".join(bad[:8]) + (f"; ... and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise ConversionError(
            f"{what}: {len(bad)} tensors have other shapes than the config's ({shown}). Pass the "
            "Sam3Config of the checkpoint's architecture (the released sam3.pt is Sam3Config())."
        )


def tracker_image_state(
    tracker: Mapping[str, torch.Tensor],
    vision: Mapping[str, torch.Tensor],
    config: Sam3TrackerConfig,
) -> dict[str, torch.Tensor]:
    """The ``Sam3TrackerModel`` state dict from the official tracker's tensors (``tracker``,
    keys without ``tracker.``) and its vision encoder (``vision``, Sam3TrackerModel names:
    the detector's ViT and the converted ``sam2_convs`` neck). Memory keys are skipped; any
    other key no rule knows is an error, as are missing keys and other shapes."""
    what = "official SAM3 tracker -> Sam3TrackerModel"
    tracker = dict(tracker)
    out = dict(vision)
    points = [k for k in tracker if Rule(_POINTS, _POINTS).apply(k, "official")]
    if points:
        points.sort(key=lambda k: int(k.split(".")[-2]))
        out["prompt_encoder.point_embed.weight"] = torch.cat([tracker.pop(k) for k in points])
    if _FOURIER in tracker:
        fourier = tracker.pop(_FOURIER)
        out.update({k: fourier.clone() for k in _HF_FOURIER})
    renamed, rest = rename(tracker, TRACKER_RULES, "official")
    unknown = ["tracker." + k for k in rest if not k.startswith(TRACKER_MEMORY)]
    if unknown:
        raise KeyMapError(what, unknown=unknown)
    out.update(renamed)
    shapes = expected_shapes(Sam3TrackerModel, config)
    check_keys(what, out, shapes)
    check_shapes(what, out, shapes)
    return out
