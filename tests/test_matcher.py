"""The binary Hungarian matcher equals a brute-force search and uses SAM3's costs.

Costs are compared with the formulas written out here, in float32 (torch's default tolerances:
rtol 1.3e-6, atol 1e-5; measured 0) or to rel 1e-5 (84 ulp) where sums are taken in another
order (measured worst 2e-7 relative: 50x).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torchvision.ops import generalized_box_iou

from sam_hf.losses.matcher import (
    BinaryHungarianMatcher,
    cost_matrix,
    focal_class_cost,
    hungarian,
    mask_cost_matrix,
)


def _boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    half = torch.rand(n, 2, generator=gen) * 0.15 + 0.02
    return torch.cat([centre - half, centre + half], dim=1)


def _brute_force(cost: torch.Tensor) -> tuple[float, dict[int, int]]:
    """Minimum total cost over every injection of the smaller side into the larger."""
    p, g = cost.shape
    best, best_map = math.inf, {}
    if g <= p:
        for preds in itertools.permutations(range(p), g):
            total = sum(float(cost[preds[j], j]) for j in range(g))
            if total < best:
                best, best_map = total, {preds[j]: j for j in range(g)}
    else:
        for tgts in itertools.permutations(range(g), p):
            total = sum(float(cost[i, tgts[i]]) for i in range(p))
            if total < best:
                best, best_map = total, {i: tgts[i] for i in range(p)}
    return best, best_map


@pytest.mark.parametrize("p,g", [(5, 1), (5, 3), (6, 4), (4, 4), (3, 5), (6, 6)])
def test_assignment_and_cost_equal_brute_force(p: int, g: int) -> None:
    gen = torch.Generator().manual_seed(100 * p + g)
    for trial in range(6):
        logits = torch.randn(p, generator=gen) * 2
        pred_boxes, tgt_boxes = _boxes(p, gen), _boxes(g, gen)
        masks = torch.randn(p, 8, 8, generator=gen)
        tgt_masks = (torch.rand(g, 8, 8, generator=gen) > 0.5).float()
        cost = cost_matrix(
            logits,
            pred_boxes,
            tgt_boxes,
            cost_mask=float(trial % 2),
            pred_masks=masks,
            tgt_masks=tgt_masks,
        )
        rows, cols = hungarian(cost)
        best, best_map = _brute_force(cost)
        assert len(rows) == min(p, g)
        # a float32 sum of <= 5 costs vs the brute force's sum in another order: measured worst
        # 9.5e-7 of ~5 (2e-7 relative, 2 ulp); rel 1e-5 (84 ulp) is a 50x margin
        assert float(cost[rows, cols].sum()) == pytest.approx(best, rel=1e-5, abs=1e-6)
        assert dict(zip(rows.tolist(), cols.tolist())) == best_map
        assert cols.tolist() == sorted(cols.tolist())  # ordered by target


def test_cost_terms_follow_sam3_definitions() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([-3.0, 0.0, 2.5])
    pred, tgt = _boxes(3, gen), _boxes(2, gen)

    # Focal-style class cost: focal(as positive) - focal(as negative), alpha 0.25, gamma 2.
    s = logits.sigmoid()
    expected_cls = 0.25 * (1 - s) ** 2 * -torch.log(s) - 0.75 * s**2 * -torch.log(1 - s)
    torch.testing.assert_close(focal_class_cost(logits), expected_cls)
    assert focal_class_cost(torch.tensor([4.0])) < focal_class_cost(torch.tensor([-4.0]))

    # L1 on (cx, cy, w, h), GIoU on xyxy.
    def cxcywh(b: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                (b[:, 0] + b[:, 2]) / 2,
                (b[:, 1] + b[:, 3]) / 2,
                b[:, 2] - b[:, 0],
                b[:, 3] - b[:, 1],
            ],
            1,
        )

    l1 = (cxcywh(pred)[:, None] - cxcywh(tgt)[None]).abs().sum(-1)
    expected = 5 * l1 - 2 * generalized_box_iou(pred, tgt) + 2 * expected_cls[:, None]
    torch.testing.assert_close(cost_matrix(logits, pred, tgt), expected)
    only_box = cost_matrix(logits, pred, tgt, cost_class=0, cost_bbox=1, cost_giou=0)
    torch.testing.assert_close(only_box, l1)


def test_mask_cost_is_mean_bce_plus_dice() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 4, generator=gen)
    tgt = (torch.rand(3, 4, 4, generator=gen) > 0.4).float()
    got = mask_cost_matrix(logits, tgt)
    for i in range(2):
        for j in range(3):
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[i], tgt[j])
            prob = logits[i].sigmoid()
            dice = 1 - (2 * (prob * tgt[j]).sum() + 1) / (prob.sum() + tgt[j].sum() + 1)
            assert float(got[i, j]) == pytest.approx(float(bce + dice), rel=1e-5)


def test_matcher_per_query_and_negative_queries() -> None:
    gen = torch.Generator().manual_seed(2)
    q, p = 3, 6
    logits = torch.randn(q, p, generator=gen)
    pred_boxes = torch.stack([_boxes(p, gen) for _ in range(q)])
    num_targets = torch.tensor([2, 0, 3])
    tgt_boxes = _boxes(5, gen)
    out = BinaryHungarianMatcher()(logits, pred_boxes, tgt_boxes, num_targets)
    assert [len(src) for src, _ in out] == [2, 0, 3]
    # Query 2 is matched against its own targets (rows 2..4), numbered locally 0..2.
    rows, cols = hungarian(cost_matrix(logits[2], pred_boxes[2], tgt_boxes[2:]))
    assert out[2][0].tolist() == rows.tolist() and out[2][1].tolist() == [0, 1, 2]
    # A prediction exactly on its target, confident, is chosen over the others.
    pred_boxes[0, 4] = tgt_boxes[0]
    logits[0, 4] = 5.0
    out = BinaryHungarianMatcher()(logits, pred_boxes, tgt_boxes, num_targets)
    assert 4 in out[0][0].tolist() and out[0][0][out[0][1].tolist().index(0)] == 4


def test_matcher_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="At least one"):
        BinaryHungarianMatcher(0, 0, 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        BinaryHungarianMatcher(cost_class=-1)
    m = BinaryHungarianMatcher()
    with pytest.raises(ValueError, match="num_targets sums to 3"):
        m(torch.zeros(1, 4), torch.rand(1, 4, 4), torch.rand(2, 4), torch.tensor([3]))
    with pytest.raises(ValueError, match="cost_mask > 0 needs"):
        cost_matrix(torch.zeros(2), torch.rand(2, 4), torch.rand(1, 4), cost_mask=1.0)


def test_non_finite_costs_do_not_crash_the_solver() -> None:
    cost = torch.tensor([[float("nan"), 1.0], [0.5, float("inf")]])
    rows, cols = hungarian(cost)
    assert rows.tolist() == [1, 0] and cols.tolist() == [0, 1]
