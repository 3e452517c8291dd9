"""The SAM2 loss equals the official formulas; loss terms are pluggable by name.

The comparison with the official ``training/loss_fns.py`` itself lives in
tests/test_official_sam2_loss.py (marker ``official``, run in the official venv).
``test_equals_reference_rederivation`` always runs: it re-derives the official formulas
independently, object by object, in plain loops.

None of these is the same computation as the loss: tolerances are float32 ones. The float64
re-derivation agrees to rel 1e-5 (84 ulp; measured worst 3.7e-7: 27x), the fused chunked
mask losses to torch's float32 defaults (rtol 1.3e-6, atol 1e-5; measured worst 1.2e-7 at ~1:
90x) and their gradients to rtol 1e-4 (sums over upsampling weights; measured 16x margin).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sam_hf.losses.fused import binary_mask_losses
from sam_hf.losses.registry import LossRegistry, weighted_sum
from sam_hf.losses.sam2 import (
    SAM2_LOSS_TERMS,
    Sam2Loss,
    actual_iou,
    dice_loss,
    sigmoid_focal_loss,
)

WEIGHTS = {"loss_focal": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_bce": 5.0}
OFFICIAL_KEYS = {"focal": "loss_mask", "dice": "loss_dice", "iou": "loss_iou", "bce": "loss_class"}


def random_steps(n: int = 5, h: int = 24, w: int = 20, seed: int = 0):
    """Targets with one empty object, and 3 steps: multimask (3), then two single-mask steps."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.rand(n, h, w, generator=g) > 0.6
    targets[2] = False  # an absent object
    steps = []
    for m in (3, 1, 1):
        logits = 3 * torch.randn(n, m, h, w, generator=g)
        logits[0, 0] = torch.where(targets[0], 4.0, -4.0)  # a near-perfect mask somewhere
        ious = torch.rand(n, m, generator=g)
        scores = 2 * torch.randn(n, 1, generator=g)
        steps.append((logits, ious, scores))
    return targets, steps


def ours(targets, steps, iou_loss="l1", **weights):
    loss = Sam2Loss(iou_loss=iou_loss, **{**WEIGHTS, **weights})
    terms = loss.new_terms(targets.float())
    for logits, ious, scores in steps:
        loss.accumulate(terms, logits, ious, scores, targets, targets.shape[0])
    return terms, loss.total(terms)


def _reference(targets, steps, iou_loss="l1"):
    """Independent re-derivation of MultiStepMultiMasksAndIous (sam2.1 training config)."""
    n = targets.shape[0]
    acc = {"focal": 0.0, "dice": 0.0, "iou": 0.0, "bce": 0.0}
    for logits, ious, scores in steps:
        for i in range(n):
            t = targets[i].double()
            present = float(t.sum() > 0)
            per_mask = []
            for k in range(logits.shape[1]):
                x = logits[i, k].double()
                p = torch.sigmoid(x)
                ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
                pt = p * t + (1 - p) * (1 - t)
                focal = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - pt) ** 2).mean()
                dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
                pred = x > 0
                union = (pred | (t > 0)).sum().clamp(min=1)
                true_iou = (pred & (t > 0)).sum() / union
                d = float(ious[i, k]) - float(true_iou)
                per_mask.append((float(focal), float(dice), abs(d) if iou_loss == "l1" else d * d))
            best = min(range(len(per_mask)), key=lambda k: 20 * per_mask[k][0] + per_mask[k][1])
            acc["focal"] += present * per_mask[best][0] / n
            acc["dice"] += present * per_mask[best][1] / n
            acc["iou"] += present * sum(m[2] for m in per_mask) / len(per_mask) / n
            s = float(scores[i, 0])
            acc["bce"] += (math.log1p(math.exp(-abs(s))) + max(s, 0) - s * present) / n
    return acc


@pytest.mark.parametrize("iou_loss", ["l1", "mse"])
def test_equals_reference_rederivation(iou_loss):
    targets, steps = random_steps(seed=3)
    terms, total = ours(targets, steps, iou_loss=iou_loss)
    ref = _reference(targets, steps, iou_loss)
    for name in ref:
        assert terms[name].item() == pytest.approx(ref[name], rel=1e-5, abs=1e-7), name
    expected = 20 * ref["focal"] + ref["dice"] + ref["iou"] + 5 * ref["bce"]
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_only_the_best_mask_gets_mask_gradients_but_iou_head_supervises_all():
    targets, steps = random_steps(n=3, seed=1)
    logits, ious, scores = (t.clone().requires_grad_() for t in steps[0])
    loss = Sam2Loss(**WEIGHTS)
    x = loss.inputs(logits, ious, scores, targets, 3)
    total = sum(SAM2_LOSS_TERMS.get(n)(x) * w for n, w in loss.weights.items())
    total.backward()
    touched = logits.grad.flatten(2).abs().sum(-1) > 0
    for i in range(3):
        if targets[i].any():
            assert touched[i].tolist() == [k == int(x.best[i]) for k in range(3)]
        else:
            assert not touched[i].any()  # absent object: no mask loss at all
    present = targets.flatten(1).any(1)
    assert (ious.grad[present] != 0).all() and (ious.grad[~present] == 0).all()
    assert (scores.grad != 0).all()  # object score: every object, present or not
    assert int(x.best[0]) == 0  # the near-perfect mask is the one trained


def test_absent_objects_contribute_only_the_object_score_loss():
    targets = torch.zeros(2, 8, 8, dtype=torch.bool)
    logits, ious, scores = torch.randn(2, 3, 8, 8), torch.rand(2, 3), torch.randn(2, 1)
    terms = Sam2Loss(**WEIGHTS).step_terms(logits, ious, scores, targets, 2)
    assert terms["focal"] == 0 and terms["dice"] == 0 and terms["iou"] == 0
    expected = F.binary_cross_entropy_with_logits(scores, torch.zeros(2, 1))
    torch.testing.assert_close(terms["bce"], expected)


def test_focal_and_dice_values_on_a_hand_case():
    logits = torch.tensor([0.0, 0.0]).reshape(1, 1, 1, 2)
    targets = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    # p = 0.5 everywhere: ce = ln 2, (1 - p_t)^2 = 0.25; alpha 0.25 / 0.75
    expected_focal = (0.25 + 0.75) * math.log(2) * 0.25 / 2
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected_focal)
    assert dice_loss(logits, targets).item() == pytest.approx(1 - (2 * 0.5 + 1) / (1.0 + 1 + 1))


def test_steps_are_summed_and_zero_weight_terms_skipped():
    targets, steps = random_steps(seed=5)
    one, _ = ours(targets, steps[:1])
    two, _ = ours(targets, steps[:2])
    only_second, _ = ours(targets, steps[1:2])
    for name in one:
        torch.testing.assert_close(two[name], one[name] + only_second[name])
    loss = Sam2Loss(**{**WEIGHTS, "loss_bce": 0.0})
    assert "bce" not in loss.step_terms(*steps[0], targets, 5)


# ------------------------------------------------------------------------------- registry


def test_custom_term_is_weighted_from_extra_loss_weights():
    @SAM2_LOSS_TERMS.register("mean_prob_test")
    def mean_prob(x):
        return x.normalise(torch.sigmoid(x.best_mask_logits).flatten(1).mean(1))

    try:
        targets, steps = random_steps(seed=2)
        base_terms, base = ours(targets, steps)
        loss = Sam2Loss(**WEIGHTS, extra_loss_weights={"mean_prob_test": 2.5})
        terms = loss.new_terms(targets.float())
        for s in steps:
            loss.accumulate(terms, *s, targets, 5)
        manual = sum(
            torch.sigmoid(loss.inputs(*s, targets, 5).best_mask_logits).flatten(1).mean(1).sum() / 5
            for s in steps
        )
        torch.testing.assert_close(terms["mean_prob_test"], manual)
        torch.testing.assert_close(loss.total(terms), base + 2.5 * manual)
    finally:
        SAM2_LOSS_TERMS.unregister("mean_prob_test")
    assert "mean_prob_test" not in SAM2_LOSS_TERMS


def test_registry_rejects_unknown_duplicate_and_builtin_names():
    with pytest.raises(ValueError, match="no sam2 loss term named 'boundry'"):
        Sam2Loss(extra_loss_weights={"boundry": 1.0})
    with pytest.raises(ValueError, match="set its weight with loss_focal"):
        Sam2Loss(extra_loss_weights={"focal": 1.0})
    with pytest.raises(ValueError, match="already registered"):
        SAM2_LOSS_TERMS.register("dice")(lambda x: x)
    with pytest.raises(ValueError, match="iou_loss must be one of"):
        Sam2Loss(iou_loss="huber")
    assert SAM2_LOSS_TERMS.builtin_names() == ["bce", "dice", "focal", "iou"]


def test_generic_registry_and_weighted_sum():
    reg = LossRegistry("demo")
    reg.register("a", builtin=True)(lambda x: x * 2)
    reg.register("b")(lambda x: x + 1)
    w = reg.resolve_weights({"a": 1.0}, {"b": 0.5})
    vals = reg.compute(w, torch.tensor(3.0))
    assert weighted_sum(vals, w).item() == 6.0 + 0.5 * 4.0
    assert weighted_sum({"a": torch.tensor(float("nan"))}, {"a": 0.0}).item() == 0.0
    with pytest.raises(ValueError, match="must be >= 0"):
        reg.resolve_weights({}, {"b": -1.0})


def test_fused_mask_losses_equal_the_plain_formulas_on_upsampled_logits():
    """Values and gradients of the fused, chunked path equal the plain formulas on
    ``F.interpolate(low-res logits)``, including masks whose gradient weight is zero."""
    g = torch.Generator().manual_seed(0)
    targets = torch.rand(5, 32, 32, generator=g) > 0.6
    targets[1] = False  # an absent object
    low = (3 * torch.randn(5, 3, 8, 8, generator=g)).requires_grad_()
    wf, wd = torch.rand(5, 3, generator=g), torch.rand(5, 3, generator=g)
    wf[0] = 0.0  # masks without gradient are skipped by the fused backward
    focal, dice, iou = binary_mask_losses(low, targets, chunk_elements=2 * 32 * 32)
    (grad,) = torch.autograd.grad((focal * wf).sum() + (dice * wd).sum(), low)
    high = F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    t = targets.float()[:, None].expand_as(high)
    ref_f, ref_d = sigmoid_focal_loss(high, t), dice_loss(high, t)
    (ref_grad,) = torch.autograd.grad((ref_f * wf).sum() + (ref_d * wd).sum(), low)
    torch.testing.assert_close(focal, ref_f)
    torch.testing.assert_close(dice, ref_d)
    torch.testing.assert_close(iou, actual_iou(high, t))
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6 * ref_grad.abs().max().item())
    assert not iou.requires_grad


def test_low_resolution_logits_give_the_loss_of_their_upsampled_masks():
    """What the model passes (the decoder's low-res logits) and what the official loss sees
    (those logits upsampled to the ground truth) give the same terms and gradients."""
    targets, steps = random_steps(n=4, h=32, w=32, seed=5)
    g = torch.Generator().manual_seed(6)
    lows = [
        (3 * torch.randn(4, logits.shape[1], 8, 8, generator=g)).requires_grad_()
        for logits, _, _ in steps
    ]
    highs = [F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) for x in lows]
    low_steps = [(x, i, s) for x, (_, i, s) in zip(lows, steps)]
    high_steps = [(x, i, s) for x, (_, i, s) in zip(highs, steps)]
    terms_low, total_low = ours(targets, low_steps)
    terms_high, total_high = ours(targets, high_steps)
    for name in terms_high:
        torch.testing.assert_close(terms_low[name], terms_high[name], msg=name)
    grads_low = torch.autograd.grad(total_low, lows)
    grads_high = torch.autograd.grad(total_high, lows)
    for a, b in zip(grads_low, grads_high):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())
