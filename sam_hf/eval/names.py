"""Display names and orders of metrics and protocols, shared by report.md and the plots."""

from __future__ import annotations

#: Display names of metric keys (tables and plots).
METRIC_NAMES = {
    "mean_iou": "mean IoU",
    "mean_dice": "mean Dice",
    "mean_boundary_f1": "Boundary F1",
    "iou_at_50": "IoU>=0.5",
    "cgF1": "cgF1",
    "pmF1": "pmF1",
    "IL_MCC": "IL_MCC",
    "cgF1_50": "cgF1@50",
    "cgF1_75": "cgF1@75",
    "concept_recall": "concept recall",
    "grounding_accuracy": "grounding acc.",
    "attribute_accuracy": "attribute acc.",
    "mask_AP": "mask AP",
    "mask_AP50": "AP50",
    "mask_AP75": "AP75",
    "mask_AR": "mask AR",
    "mean_instance_iou": "mean instance IoU",
    "instance_recall": "instance recall",
}
SAM2_TABLE = ("mean_iou", "mean_dice", "mean_boundary_f1", "iou_at_50")
SAM3_TABLE = (
    "cgF1",
    "pmF1",
    "IL_MCC",
    "cgF1_50",
    "cgF1_75",
    "concept_recall",
    "grounding_accuracy",
    "attribute_accuracy",
    "mask_AP",
    "mask_AP50",
    "mask_AR",
    "mean_iou",
)
SAM3_BARS = (
    "cgF1",
    "pmF1",
    "IL_MCC",
    "concept_recall",
    "grounding_accuracy",
    "mask_AP",
    "mean_iou",
)
COMMON = ("mean_instance_iou", "concept_recall", "instance_recall")
#: Protocols in table order (a protocol name starts with one of these).
PROMPT_ORDER = ("point", "points", "box", "text")


def metric_name(key: str, family: str = "sam2") -> str:
    """How a metric key reads in a table or plot: SAM3's ``mean_iou`` is its matched IoU."""
    if family == "sam3" and key == "mean_iou":
        return "matched IoU"
    return METRIC_NAMES.get(key, key)


def protocol_order(name: str) -> int:
    """Sort key of a protocol name (see :data:`PROMPT_ORDER`); unknown names go last."""
    for i, p in enumerate(PROMPT_ORDER):
        if name.startswith(p):
            return i
    return len(PROMPT_ORDER)
