"""Training presets: named sets of loss weights and prompt-simulation settings.

``preset: official`` trains as Meta's own fine-tuning code does (each value below names the
official file it comes from); ``preset: guide`` keeps the numbers of the fine-tuning guide
this project started from. A preset only fills the keys a user left unset (``None``): every
term stays settable from YAML or the command line, and the saved ``config.yaml`` holds the
resolved values, so a run says exactly what it trained with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sam_hf.config.errors import ConfigError

_MOSE = "sam2/configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml"
_TRAIN = "sam2 training/model/sam2.py SAM2Train"
_RF = "sam3/train/configs/roboflow_v100/roboflow_v100_full_ft_100_images.yaml"
_LF = "sam3/train/loss/loss_fns.py"

#: Preset values per family. Each entry: key -> (value, where the value comes from).
PRESETS: dict[str, dict[str, dict[str, tuple[Any, str]]]] = {
    "sam2": {
        "official": {
            "loss_focal": (20.0, f"{_MOSE} trainer.loss.all.weight_dict.loss_mask (L285)"),
            "loss_dice": (1.0, f"{_MOSE} trainer.loss.all.weight_dict.loss_dice (L286)"),
            "loss_iou": (1.0, f"{_MOSE} trainer.loss.all.weight_dict.loss_iou (L287)"),
            "loss_bce": (1.0, f"{_MOSE} trainer.loss.all.weight_dict.loss_class (L288)"),
            "prompt_type": (
                "mixed",
                f"{_MOSE} trainer.model.prob_to_use_box_input_for_train: 0.5 (L183); on single images "
                f"{_TRAIN} prepare_prompt_inputs forces point input (L181-186), so P(box) = 0.5",
            ),
            "num_points": (
                1,
                f"{_TRAIN} prepare_prompt_inputs: one initial point (get_next_point, L235-243)",
            ),
            "num_correction_clicks": (
                7,
                f"{_MOSE} trainer.model.num_correction_pt_per_frame: 7 (L193)",
            ),
            "gt_click_prob": (
                0.1,
                f"{_MOSE} trainer.model.prob_to_sample_from_gt_for_train: 0.1 (L185)",
            ),
            "object_score_gating": (
                True,
                f"{_MOSE} trainer.model.pred_obj_scores: true (L167); sam2/modeling/sam2_base.py "
                "_forward_sam_heads: low_res_multimasks = where(score > 0, masks, NO_OBJ_SCORE "
                "-1024) (L360-368)",
            ),
            "empty_target_prob": (
                0.5,
                "sam_hf's stand-in for the official video data's absent objects (loss_fns.py "
                "target_obj = any(gt > 0), L245); the rate itself has no official counterpart",
            ),
        },
        "guide": {
            "loss_focal": (20.0, "the fine-tuning guide"),
            "loss_dice": (1.0, "the fine-tuning guide"),
            "loss_iou": (1.0, "the fine-tuning guide"),
            "loss_bce": (5.0, "the fine-tuning guide"),
            "prompt_type": ("point", "the fine-tuning guide (point prompts)"),
            "num_points": (1, "the fine-tuning guide (1, or 3-5 when set)"),
            "num_correction_clicks": (7, "issue #14: the guide's points simulate interaction"),
            "gt_click_prob": (0.0, "the fine-tuning guide (no ground-truth clicks)"),
            "object_score_gating": (False, "the fine-tuning guide (no gating)"),
            "empty_target_prob": (0.0, "the fine-tuning guide (empty objects dropped)"),
        },
    },
    "sam3": {
        "official": {
            # sam3/train/configs/roboflow_v100/roboflow_v100_full_ft_100_images.yaml: the loss
            # with segmentation is its commented block trainer.loss (L108-154); the box/class
            # part equals the active roboflow_train.loss (L75-104). Code: sam3/train/loss/.
            "class_loss": ("iabce", f"{_RF} loss_fns_find: IABCEMdetr (L90, L123)"),
            "iabce_alpha": (0.25, f"{_RF} IABCEMdetr.alpha (L96): t = prob^a * IoU^(1-a)"),
            "iabce_gamma": (2.0, f"{_RF} IABCEMdetr.gamma (L97): negatives x prob^gamma"),
            "iabce_pos_weight": (10.0, f"{_RF} IABCEMdetr.pos_weight (L95)"),
            "class_pad_queries": (200, f"{_RF} IABCEMdetr.pad_n_queries (L100)"),
            "negative_class_loss": (
                False,
                f"{_RF} IABCEMdetr.use_presence: True (L98); {_LF} IABCEMdetr keep_loss (L422)",
            ),
            "presence_alpha": (0.5, f"{_LF} IABCEMdetr presence_alpha=0.5 default (L289, L432)"),
            "weight_class": (20.0, f"{_RF} IABCEMdetr weight_dict.loss_ce (L93)"),
            "weight_presence": (20.0, f"{_RF} IABCEMdetr weight_dict.presence_loss (L94)"),
            "weight_bbox": (5.0, f"{_RF} Boxes weight_dict.loss_bbox (L88)"),
            "weight_giou": (2.0, f"{_RF} Boxes weight_dict.loss_giou (L89)"),
            "weight_mask_focal": (200.0, f"{_RF} Masks weight_dict.loss_mask (L139)"),
            "weight_mask_dice": (10.0, f"{_RF} Masks weight_dict.loss_dice (L140)"),
            "focal_alpha": (0.25, f"{_RF} Masks.focal_alpha (L136); matcher alpha (L186)"),
            "focal_gamma": (2.0, f"{_RF} Masks.focal_gamma (L137); matcher gamma (L187)"),
            "cost_class": (2.0, f"{_RF} scratch.matcher.cost_class (L183)"),
            "cost_bbox": (5.0, f"{_RF} scratch.matcher.cost_bbox (L184)"),
            "cost_giou": (2.0, f"{_RF} scratch.matcher.cost_giou (L185)"),
            "cost_mask": (0.0, f"{_RF} scratch.matcher: BinaryHungarianMatcherV2, no mask cost"),
            "loss_grounding": (1.0, f"{_RF}: no group weights (1)"),
            "loss_segmentation": (1.0, f"{_RF}: no group weights (1)"),
            "loss_attribute": (0.0, f"{_RF}: no attribute up-weighting (0)"),
            "mask_resolution": ("target", f"{_LF} Masks.get_loss: upsample predictions (L684)"),
            "aux_loss": (
                True,
                f"{_LF} Boxes/IABCEMdetr compute_aux=True, Masks False (L577); "
                "sam3/train/loss/sam3_loss.py aux_outputs (L89-94)",
            ),
            "scale_by_batch_size": (True, f"{_RF} scratch.scale_by_find_batch_size (L189)"),
            "normalization": (
                "global",
                "sam3/train/loss/sam3_loss.py normalization='global' (L41)",
            ),
        },
        "guide": {
            "class_loss": ("focal", "the fine-tuning guide"),
            "iabce_alpha": (0.25, "unused unless class_loss: iabce (official value)"),
            "iabce_gamma": (2.0, "unused unless class_loss: iabce (official value)"),
            "iabce_pos_weight": (10.0, "unused unless class_loss: iabce (official value)"),
            "class_pad_queries": (200, "unused unless class_loss: iabce (official value)"),
            "negative_class_loss": (True, "the fine-tuning guide (every query)"),
            "presence_alpha": (-1.0, "the fine-tuning guide (plain BCE)"),
            "weight_class": (1.0, "the fine-tuning guide"),
            "weight_presence": (1.0, "the fine-tuning guide"),
            "weight_bbox": (5.0, "the fine-tuning guide"),
            "weight_giou": (2.0, "the fine-tuning guide"),
            "weight_mask_focal": (20.0, "the fine-tuning guide"),
            "weight_mask_dice": (1.0, "the fine-tuning guide"),
            "focal_alpha": (0.25, "the fine-tuning guide"),
            "focal_gamma": (2.0, "the fine-tuning guide"),
            "cost_class": (2.0, "the fine-tuning guide"),
            "cost_bbox": (5.0, "the fine-tuning guide"),
            "cost_giou": (2.0, "the fine-tuning guide"),
            "cost_mask": (0.0, "the fine-tuning guide"),
            "loss_grounding": (0.5, "the fine-tuning guide"),
            "loss_segmentation": (1.0, "the fine-tuning guide"),
            "loss_attribute": (0.3, "the fine-tuning guide"),
            "mask_resolution": ("prediction", "sam_hf before issue #14 (targets downsampled)"),
            "aux_loss": (False, "sam_hf before issue #14 (last decoder layer only)"),
            "scale_by_batch_size": (False, "sam_hf before issue #14"),
            "normalization": ("local", "sam_hf before issue #14 (this process's targets)"),
        },
    },
}
#: SAM3's tracker head is a SAM2 decoder on SAM3's backbone, trained with SAM2's prompts and
#: loss: the same presets (the official values are SAM2.1's; Meta publishes no tracker
#: fine-tuning recipe for single images).
PRESETS["sam3_tracker"] = PRESETS["sam2"]
PRESET_NAMES = ("official", "guide")


def preset_keys(family: str) -> set[str]:
    """Every key some preset of ``family`` sets (those fields default to ``None``)."""
    return {k for values in PRESETS.get(family, {}).values() for k in values}


def apply_preset(cfg: Any) -> None:
    """Fill every preset key the user left unset (``None``) from ``cfg.preset``."""
    family = getattr(cfg, "family", None)
    if family not in PRESETS:
        return
    if cfg.preset not in PRESETS[family]:
        raise ConfigError(
            f"preset must be one of {', '.join(PRESETS[family])}, got {cfg.preset!r}."
        )
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, (value, _source) in PRESETS[family][cfg.preset].items():
        if key not in names:
            raise ConfigError(f"preset {cfg.preset!r} sets unknown key {key!r} (a bug).")
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)


def preset_table(family: str) -> list[tuple[str, Any, Any, str]]:
    """(key, official value, guide value, official source) rows, for the README and --help."""
    official, guide = PRESETS[family]["official"], PRESETS[family]["guide"]
    rows = []
    for key in sorted(set(official) | set(guide)):
        o = official.get(key, (None, ""))
        g = guide.get(key, (None, ""))
        rows.append((key, o[0], g[0], o[1]))
    return rows


def _cell(value: Any) -> str:
    return f"`{value}`" if not isinstance(value, str) or value else "`''`"


def markdown_table(family: str) -> str:
    """The README's preset table for ``family``: key, each preset's value, the official source.

    tests/test_readme_commands.py checks that the README holds exactly this text, so the
    documented values are the ones that run."""
    lines = ["| key | official | guide | where the official value comes from |"]
    lines.append("| --- | --- | --- | --- |")
    for key, official, guide, source in preset_table(family):
        lines.append(f"| `{key}` | {_cell(official)} | {_cell(guide)} | {source} |")
    return "\n".join(lines)
