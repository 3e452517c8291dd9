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
from transformers import Sam3Model

from sam_hf.losses.sam3 import Sam3Loss, Sam3LossConfig, dice_loss, resize_target_masks
from sam_hf.models.sam3 import decoder_layer_capture, decoder_layer_outputs, tiny_sam3_config

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


# --- presets (issue 14) -------------------------------------------------------------------

#: sam_hf's SAM3 loss settings before the presets existed: ``preset: guide`` must keep them.
PREVIOUS_DEFAULTS = dict(
    loss_segmentation=1.0,
    loss_grounding=0.5,
    loss_attribute=0.3,
    class_loss="focal",
    negative_class_loss=True,
    cost_class=2.0,
    cost_bbox=5.0,
    cost_giou=2.0,
    cost_mask=0.0,
    weight_class=1.0,
    weight_presence=1.0,
    weight_bbox=5.0,
    weight_giou=2.0,
    weight_mask_focal=20.0,
    weight_mask_dice=1.0,
    focal_alpha=0.25,
    focal_gamma=2.0,
    presence_alpha=-1.0,  # plain BCE
    mask_resolution="prediction",
    aux_loss=False,
    scale_by_batch_size=False,
    normalization="local",
)


def test_guide_preset_keeps_the_previous_settings_and_keys_override_presets() -> None:
    guide = Sam3LossConfig(preset="guide")
    for key, value in PREVIOUS_DEFAULTS.items():
        assert getattr(guide, key) == value, key
    official = Sam3LossConfig(weight_class=3.0)  # a set key wins over the preset
    assert official.weight_class == 3.0 and official.class_loss == "iabce"
    assert official.weight_mask_focal == 200.0 and official.aux_loss


def _random_case(seed: int, q: int = 3, p: int = 6) -> dict:
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(q, p, 2, generator=gen) * 0.6 + 0.2
    half = torch.rand(q, p, 2, generator=gen) * 0.15 + 0.02
    return dict(
        pred_logits=torch.randn(q, p, generator=gen),
        pred_boxes=torch.cat([centre - half, centre + half], dim=-1),
        pred_masks=torch.randn(q, p, 4, 4, generator=gen),
        presence_logits=torch.randn(q, 1, generator=gen),
        target_boxes=torch.tensor(
            [[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.8], [0.2, 0.3, 0.6, 0.9]]
        ),
        target_masks=torch.rand(3, 12, 12, generator=gen) > 0.5,
        num_targets=torch.tensor([2, 0, 1]),
    )


def test_iabce_by_hand() -> None:
    """One query, one target, two detections: the matched one on the box (IoU 9/16)."""
    target = torch.tensor([[0.1, 0.1, 0.5, 0.5]])
    boxes = torch.tensor([[[0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.4, 0.4]]])
    logits = torch.tensor([[0.3, -0.4]])
    fn = Sam3Loss(class_pad_queries=0)
    _, terms = fn(
        logits,
        boxes,
        torch.zeros(1, 2, 4, 4),
        torch.tensor([[1.5]]),
        target,
        _rect_mask(4, 0, 0, 2, 2)[None],
        torch.tensor([1]),
    )
    p0, p1 = torch.sigmoid(torch.tensor([0.3, -0.4]))
    t = p1**0.25 * (9 / 16) ** 0.75  # soft target of the matched detection
    pos = 10.0 * -(t * torch.log(p1) + (1 - t) * torch.log(1 - p1))
    neg = p0**2 * -torch.log(1 - p0)
    assert float(terms["loss_class"]) == pytest.approx(float((pos + neg) / 2), rel=1e-5)
    # presence: 0.5-weighted BCE (official focal with alpha 0.5, gamma 0)
    assert float(terms["loss_presence"]) == pytest.approx(
        0.5 * float(F.softplus(torch.tensor(-1.5))), rel=1e-6
    )
    _, padded = Sam3Loss()(
        logits,
        boxes,
        torch.zeros(1, 2, 4, 4),
        torch.tensor([[1.5]]),
        target,
        _rect_mask(4, 0, 0, 2, 2)[None],
        torch.tensor([1]),
    )
    # padded to 200 detections: the same sum over 200 entries instead of 2
    assert float(padded["loss_class"]) == pytest.approx(
        float(terms["loss_class"]) * 2 / 200, rel=1e-5
    )


def test_aux_layers_and_batch_scaling_add_up() -> None:
    case = _random_case(5)
    aux_case = _random_case(6)
    aux = [{k: aux_case[k] for k in ("pred_logits", "pred_boxes", "presence_logits")}]
    fn = Sam3Loss(scale_by_batch_size=False)
    plain, _ = fn(**case)
    with_aux, terms = fn(**case, aux_outputs=aux)
    ctx = (
        case["target_boxes"],
        case["num_targets"],
        torch.ones(3),
        fn.num_boxes(case["num_targets"]),
    )
    aux_terms, _ = fn.detection_terms(aux[0], ctx)
    assert float(terms["loss_aux"]) == pytest.approx(float(fn.grounding(aux_terms)), rel=1e-6)
    assert float(with_aux) == pytest.approx(float(plain + terms["loss_aux"]), rel=1e-6)
    off, off_terms = Sam3Loss(scale_by_batch_size=False, aux_loss=False)(**case, aux_outputs=aux)
    assert "loss_aux" not in off_terms and float(off) == pytest.approx(float(plain), rel=1e-6)
    scaled, _ = Sam3Loss()(**case, aux_outputs=aux)  # official: x sqrt(3 queries)
    assert float(scaled) == pytest.approx(float(with_aux) * 3**0.5, rel=1e-6)


def test_mask_loss_at_target_resolution_is_the_upsampled_formula() -> None:
    """Values and gradients of the fused path equal focal/dice on bilinearly upsampled logits."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, 4, generator=gen, requires_grad=True)
    targets = torch.rand(3, 12, 12, generator=gen) > 0.5
    fn = Sam3Loss()
    w, n = torch.tensor([1.0, 1.0, 1.3]), torch.tensor(2.0)
    got = fn.mask_losses(logits, targets, w, n)
    up = F.interpolate(logits[:, None], size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    tf = targets.float()
    focal = (
        tv_focal(up, tf, alpha=0.25, gamma=2.0, reduction="none").flatten(1).mean(1) * w
    ).sum() / n
    dice = (dice_loss(up, tf) * w).sum() / n
    assert float(got["loss_mask_focal"]) == pytest.approx(float(focal), rel=1e-5)
    assert float(got["loss_mask_dice"]) == pytest.approx(float(dice), rel=1e-5)
    g_got = torch.autograd.grad(got["loss_mask_focal"] + got["loss_mask_dice"], logits)[0]
    g_ref = torch.autograd.grad(focal + dice, logits)[0]
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-7)


def test_decoder_layer_outputs_last_layer_is_the_models_output() -> None:
    """The hooks read every decoder layer as Sam3Model computes its last one (bitwise)."""

    torch.manual_seed(0)
    model = Sam3Model(tiny_sam3_config(112)).eval()
    ids = torch.randint(0, 49000, (2, 8))
    with torch.no_grad(), decoder_layer_capture(model) as store:
        out = model(pixel_values=torch.randn(2, 3, 112, 112), input_ids=ids)
    layers = decoder_layer_outputs(store)
    assert len(layers) == model.config.detr_decoder_config.num_layers
    assert torch.equal(layers[-1]["pred_logits"], out.pred_logits)
    assert torch.equal(layers[-1]["pred_boxes"], out.pred_boxes)
    assert torch.equal(layers[-1]["presence_logits"], out.presence_logits)
    assert not torch.equal(layers[0]["pred_logits"], out.pred_logits)
