"""SAM3 loss terms checked by hand on tiny cases.

The hand-checked formulas of the grouped terms are those of ``preset: guide`` (hard-target
focal/BCE classification, masks at the prediction's resolution, last decoder layer only);
the tests of ``preset: official`` follow them. The official preset against the official code:
``tests/test_official_sam3_loss.py``.

Values are compared with formulas written out here (another order of float32 operations, or a
torchvision implementation): rel 1e-6 (8 ulp) for a single elementwise formula, 1e-5 (84 ulp)
where a mean or sum is taken in another order. Measured worst 7.6e-8 relative (torchvision's
focal loss), 130x under 1e-5; the rel 1e-6 comparisons measured 0.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_focal

from sam_hf.losses.sam3 import Sam3Loss, Sam3LossConfig, resize_target_masks

BOX_TERMS = ("loss_bbox", "loss_giou", "loss_mask_focal", "loss_mask_dice")


def _rect_mask(res: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    m = torch.zeros(res, res, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def _perfect_case() -> dict[str, torch.Tensor]:
    """Query 0: 2 targets predicted exactly by detections 1 and 3; query 1: negative."""
    res, h = 16, 8  # targets at 16 px, predictions at 8 px (2x2 blocks align exactly)
    t_masks = torch.stack([_rect_mask(res, 2, 2, 8, 6), _rect_mask(res, 10, 8, 16, 16)])
    t_boxes = torch.tensor([[2, 2, 8, 6], [10, 8, 16, 16]], dtype=torch.float32) / res
    q, p = 2, 4
    logits = torch.full((q, p), -12.0)
    logits[0, 1] = logits[0, 3] = 12.0
    boxes = torch.tensor([0.1, 0.1, 0.3, 0.3]).repeat(q, p, 1)
    boxes[0, 1], boxes[0, 3] = t_boxes[0], t_boxes[1]
    masks = torch.full((q, p, h, h), -20.0)
    small = resize_target_masks(t_masks, (h, h))
    masks[0, 1] = torch.where(small[0] > 0, 20.0, -20.0)
    masks[0, 3] = torch.where(small[1] > 0, 20.0, -20.0)
    presence = torch.tensor([[12.0], [-12.0]])
    return {
        "pred_logits": logits,
        "pred_boxes": boxes,
        "pred_masks": masks,
        "presence_logits": presence,
        "target_boxes": t_boxes,
        "target_masks": t_masks,
        "num_targets": torch.tensor([2, 0]),
        "is_attribute": torch.tensor([False, False]),
    }


@pytest.mark.parametrize("class_loss", ["focal", "bce"])
def test_perfect_prediction_gives_near_zero_terms(class_loss: str) -> None:
    case = _perfect_case()
    loss, terms = Sam3Loss(preset="guide", class_loss=class_loss)(**case)
    for name in BOX_TERMS:
        assert float(terms[name]) < 1e-4, name
    assert float(terms["loss_class"]) < 1e-3
    assert float(terms["loss_presence"]) < 1e-4
    assert float(loss) < 1e-3


def test_negative_query_has_no_box_or_mask_terms() -> None:
    gen = torch.Generator().manual_seed(0)
    p = 5
    logits = torch.randn(1, p, generator=gen, requires_grad=True)
    boxes = torch.tensor([0.2, 0.2, 0.6, 0.7]).repeat(1, p, 1).requires_grad_()
    masks = torch.randn(1, p, 8, 8, generator=gen, requires_grad=True)
    presence = torch.tensor([[0.7]], requires_grad=True)
    loss, terms = Sam3Loss(preset="guide", class_loss="bce")(
        logits,
        boxes,
        masks,
        presence,
        torch.zeros(0, 4),
        torch.zeros(0, 16, 16, dtype=torch.bool),
        torch.tensor([0]),
    )
    for name in BOX_TERMS:
        assert float(terms[name]) == 0.0
    # "Nothing here": every detection -> 0 (sum over detections, normaliser clamped to 1) ...
    assert float(terms["loss_class"]) == pytest.approx(
        float(F.softplus(logits.detach()).sum()), rel=1e-6
    )
    # ... and presence -> 0.
    assert float(terms["loss_presence"]) == pytest.approx(
        float(F.softplus(torch.tensor(0.7))), rel=1e-6
    )
    loss.backward()
    assert boxes.grad is None or float(boxes.grad.abs().sum()) == 0.0
    assert masks.grad is None or float(masks.grad.abs().sum()) == 0.0
    assert float(logits.grad.abs().sum()) > 0 and float(presence.grad.abs().sum()) > 0


def test_class_and_presence_by_hand_bce() -> None:
    """One positive query, one target, two detections; the matched one is the one on the box."""
    target = torch.tensor([[0.1, 0.1, 0.5, 0.5]])
    boxes = torch.tensor([[[0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.5, 0.5]]])
    logits = torch.tensor([[0.3, -0.4]])
    masks = torch.zeros(1, 2, 4, 4)
    t_mask = _rect_mask(4, 0, 0, 2, 2)[None]
    _, terms = Sam3Loss(preset="guide", class_loss="bce")(
        logits, boxes, masks, torch.tensor([[1.5]]), target, t_mask, torch.tensor([1])
    )
    # Detection 1 is matched (target 1), detection 0 is background (target 0).
    expected_class = F.softplus(torch.tensor(0.3)) + F.softplus(torch.tensor(0.4))
    assert float(terms["loss_class"]) == pytest.approx(float(expected_class), rel=1e-6)
    assert float(terms["loss_presence"]) == pytest.approx(
        float(F.softplus(torch.tensor(-1.5))), rel=1e-6
    )
    assert float(terms["loss_bbox"]) == pytest.approx(0.0, abs=1e-7)
    # Mask of all-zero logits: focal = mean of alpha_t * BCE(0) * 0.5**2, dice = 1 - (2*2+1)/(8+4+1).
    alpha_t = torch.where(t_mask[0].flatten(), 0.25, 0.75)
    expected_focal = (alpha_t * torch.log(torch.tensor(2.0)) * 0.25).mean()
    assert float(terms["loss_mask_focal"]) == pytest.approx(float(expected_focal), rel=1e-5)
    assert float(terms["loss_mask_dice"]) == pytest.approx(1 - 5 / 13, rel=1e-5)


def test_focal_class_loss_matches_torchvision() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, generator=gen)
    centre = torch.rand(2, 6, 2, generator=gen) * 0.6 + 0.2
    half = torch.rand(2, 6, 2, generator=gen) * 0.15 + 0.02
    boxes = torch.cat([centre - half, centre + half], dim=-1)
    case = dict(
        pred_logits=logits,
        pred_boxes=boxes,
        pred_masks=torch.zeros(2, 6, 4, 4),
        presence_logits=torch.zeros(2, 1),
        target_boxes=torch.tensor([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.8]]),
        target_masks=torch.ones(2, 4, 4, dtype=torch.bool),
        num_targets=torch.tensor([2, 0]),
    )
    loss_fn = Sam3Loss(preset="guide", class_loss="focal")
    _, terms = loss_fn(**case)
    matched = loss_fn.matcher(logits, boxes, case["target_boxes"], case["num_targets"])
    target = torch.zeros_like(logits)
    target[0, matched[0][0]] = 1.0
    expected = tv_focal(logits, target, alpha=0.25, gamma=2.0, reduction="sum") / 2  # 2 targets
    assert float(terms["loss_class"]) == pytest.approx(float(expected), rel=1e-5)


def test_weights_map_to_terms_as_documented() -> None:
    case = _perfect_case()
    case["pred_logits"] = case["pred_logits"] * 0.1  # make every term non-trivial
    case["pred_masks"] = case["pred_masks"] * 0.05
    case["pred_boxes"] = case["pred_boxes"] + 0.02
    w = dict(
        loss_segmentation=0.7,
        loss_grounding=0.4,
        weight_class=1.5,
        weight_presence=2.5,
        weight_bbox=3.0,
        weight_giou=1.2,
        weight_mask_focal=11.0,
        weight_mask_dice=0.6,
    )
    loss, t = Sam3Loss(preset="guide", **w)(**case)
    expected = w["loss_grounding"] * (
        w["weight_class"] * t["loss_class"]
        + w["weight_presence"] * t["loss_presence"]
        + w["weight_bbox"] * t["loss_bbox"]
        + w["weight_giou"] * t["loss_giou"]
    ) + w["loss_segmentation"] * (
        w["weight_mask_focal"] * t["loss_mask_focal"] + w["weight_mask_dice"] * t["loss_mask_dice"]
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_loss_attribute_is_an_extra_weight_on_hard_negatives() -> None:
    case = _perfect_case()
    case["pred_logits"] = torch.zeros_like(case["pred_logits"])
    case["presence_logits"] = torch.zeros_like(case["presence_logits"])
    fn = Sam3Loss(preset="guide", loss_attribute=0.3, class_loss="bce")
    _, plain = fn(**case)
    case["is_attribute"] = torch.tensor([False, True])  # query 1 is an attribute hard negative
    _, weighted = fn(**case)
    ln2 = float(torch.log(torch.tensor(2.0)))
    # Class: query 0 contributes 4*ln2, query 1 4*ln2 x 1.3; normalised by 2 targets.
    assert float(plain["loss_class"]) == pytest.approx(8 * ln2 / 2, rel=1e-5)
    assert float(weighted["loss_class"]) == pytest.approx((4 + 4 * 1.3) * ln2 / 2, rel=1e-5)
    assert float(weighted["loss_presence"]) == pytest.approx((1 + 1.3) * ln2 / 2, rel=1e-5)
    for name in BOX_TERMS:  # the same inputs through the same code: equal (measured bitwise)
        assert float(weighted[name]) == pytest.approx(float(plain[name]))


def test_negative_class_loss_off_follows_sam3() -> None:
    """SAM3's choice: no per-detection class loss for absent phrases (presence handles them)."""
    case = _perfect_case()
    case["pred_logits"] = torch.zeros_like(case["pred_logits"])
    _, on = Sam3Loss(preset="guide", class_loss="bce")(**case)
    _, off = Sam3Loss(preset="guide", class_loss="bce", negative_class_loss=False)(**case)
    ln2 = float(torch.log(torch.tensor(2.0)))
    assert float(on["loss_class"]) == pytest.approx(8 * ln2 / 2, rel=1e-5)
    assert float(off["loss_class"]) == pytest.approx(4 * ln2 / 2, rel=1e-5)
    assert float(off["loss_presence"]) == pytest.approx(float(on["loss_presence"]))


def test_resize_target_masks_keeps_small_instances() -> None:
    big = _rect_mask(16, 0, 0, 8, 8)
    tiny = torch.zeros(16, 16, dtype=torch.bool)
    tiny[9, 13] = True  # covers a quarter of one 2x2 cell
    out = resize_target_masks(torch.stack([big, tiny]), (8, 8))
    assert out.dtype == torch.float32 and out.shape == (2, 8, 8)
    assert torch.equal(out[0], _rect_mask(8, 0, 0, 4, 4).float())
    assert out[1].sum() == 1 and out[1, 4, 6] == 1
    same = resize_target_masks(torch.stack([big]), (16, 16))
    assert torch.equal(same[0], big.float())


def test_config_validation_and_from_args() -> None:
    with pytest.raises(ValueError, match="class_loss must be one of"):
        Sam3LossConfig(class_loss="softmax")
    with pytest.raises(ValueError, match="weight_bbox must be >= 0"):
        Sam3LossConfig(weight_bbox=-1)
    args = types.SimpleNamespace(class_loss="bce", loss_attribute=0.9, cost_mask=1.0, unrelated=3)
    fn = Sam3Loss.from_args(args)
    assert fn.cfg.class_loss == "bce" and fn.cfg.loss_attribute == 0.9
    # unset keys come from the default preset, official (roboflow config: Masks loss_mask 200)
    assert fn.matcher.cost_mask == 1.0 and fn.cfg.weight_mask_focal == 200.0
