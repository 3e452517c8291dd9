"""SAM2 training equals Meta's code: the loss, the click samplers and the object-score gating.

Runs in the official venv (``pip install -e ".[official]"``; the ``sam2`` package ships the
official ``training/loss_fns.py`` and ``sam2/modeling/{sam2_base,sam2_utils}.py``):
``python -m pytest -m official tests/test_official_sam2_loss.py``. Reduced sizes (24 x 20
masks, 5 objects, the 64 px tiny model) keep the file to a few seconds on 2 CPU cores.

Tolerances: the loss is the same formula computed in another order (chunked sums, fused
focal) in float32: rel 1e-5 / abs 1e-6 on the values (measured worst 2.1e-7 relative, terms and
totals, under the default and avx2 ATen kernels and with the two sides under different ones:
47x), rel 1e-4 / abs 1e-8 on the gradients (sums over upsampling weights; worst 1.2 % of that
bound: 85x). Bitwise where the outputs are exact: the "center" click (integer pixel
coordinates, argmax of exact distance transforms: distinct distances stay distinct in float32 at
these sizes), the noiseless box (integer corners) and the gating (one ``torch.where`` on the
same bits; selecting the best mask by IoU copies bits). The gated mask upsampled for the next
click is compared to a tolerance: ours upsamples the selected mask, the official code all three
masks before selecting, another shape.
"""

from __future__ import annotations

import types

import pytest
import torch
from test_sam2_loss import OFFICIAL_KEYS, ours, random_steps

from sam_hf.data.prompts import (
    make_generator,
    mask_to_box,
    sample_box,
    sample_correction_clicks,
    sample_points,
)
from sam_hf.losses.sam2 import Sam2Loss
from sam_hf.models.sam2 import build_sam2
from sam_hf.models.sam2_training import NO_OBJ_SCORE, Sam2ForTraining

pytestmark = pytest.mark.official


def _official_loss(weights: dict[str, float], iou_loss: str):
    loss_fns = pytest.importorskip("training.loss_fns")
    return loss_fns.MultiStepMultiMasksAndIous(
        weight_dict={
            "loss_mask": weights["loss_focal"],
            "loss_dice": weights["loss_dice"],
            "loss_iou": weights["loss_iou"],
            "loss_class": weights["loss_bce"],
        },
        focal_alpha=0.25,
        focal_gamma=2.0,
        supervise_all_iou=True,
        iou_use_l1_loss=iou_loss == "l1",
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )


def _gated_steps(seed: int):
    """random_steps (one empty target) plus a present object whose masks are gated to -1024."""
    targets, steps = random_steps(seed=seed)
    assert bool(targets[1].any()) and not bool(targets[2].any())
    gated = []
    for logits, ious, scores in steps:
        logits, scores = logits.clone(), scores.clone()
        scores[1], scores[2] = -0.5, -1.5
        logits = torch.where(scores[:, :, None, None] > 0, logits, NO_OBJ_SCORE)
        gated.append((logits, ious, scores))
    return targets, gated


@pytest.mark.parametrize(
    "weights",
    [
        {"loss_focal": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_bce": 1.0},  # official
        {"loss_focal": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_bce": 5.0},  # guide
    ],
    ids=["official", "guide"],
)
@pytest.mark.parametrize("iou_loss", ["l1", "mse"])
@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
def test_equals_official_loss_fns(weights, iou_loss, gated):
    """Every term and the total equal MultiStepMultiMasksAndIous over 3 steps (multimask, then
    two single-mask steps) with an empty target, and (gated) a present object at -1024."""
    official = _official_loss(weights, iou_loss)
    targets, steps = _gated_steps(seed=0) if gated else random_steps()
    outs = {
        "multistep_pred_multimasks_high_res": [s[0] for s in steps],
        "multistep_pred_ious": [s[1] for s in steps],
        "multistep_object_score_logits": [s[2] for s in steps],
    }
    ref = official([outs], targets[None].float())
    terms, total = ours(targets, steps, iou_loss=iou_loss, **weights)
    for name, key in OFFICIAL_KEYS.items():
        torch.testing.assert_close(terms[name], ref[key].float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, ref["core_loss"].float(), rtol=1e-5, atol=1e-6)


def test_gradients_equal_official_loss_fns():
    """The fused backward gives the official autograd gradients (logits, IoUs, scores)."""
    weights = {"loss_focal": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_bce": 1.0}
    official = _official_loss(weights, "l1")
    targets, steps = random_steps(seed=5)
    a = [tuple(t.clone().requires_grad_() for t in s) for s in steps]
    b = [tuple(t.clone().requires_grad_() for t in s) for s in steps]
    outs = {
        "multistep_pred_multimasks_high_res": [s[0] for s in a],
        "multistep_pred_ious": [s[1] for s in a],
        "multistep_object_score_logits": [s[2] for s in a],
    }
    official([outs], targets[None].float())["core_loss"].backward()
    ours(targets, b, iou_loss="l1", **weights)[1].backward()
    for sa, sb in zip(a, b):
        for ta, tb in zip(sa, sb):
            torch.testing.assert_close(tb.grad, ta.grad, rtol=1e-4, atol=1e-8)


def test_loss_normaliser_is_the_official_one():
    """num_objects: ours divides by the count it is given, as the official loss by
    targets.shape[1] (single process: the all-reduce is skipped in both)."""
    official = _official_loss(
        {"loss_focal": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_bce": 1.0}, "l1"
    )
    targets, steps = random_steps(seed=2)
    outs = {
        "multistep_pred_multimasks_high_res": [s[0] for s in steps],
        "multistep_pred_ious": [s[1] for s in steps],
        "multistep_object_score_logits": [s[2] for s in steps],
    }
    ref = official([outs], targets[None].float())["core_loss"]
    loss = Sam2Loss(loss_bce=1.0)
    terms = loss.new_terms(targets.float())
    for logits, ious, scores in steps:  # objects split in two groups, as the wrapper does
        for sel in (slice(0, 2), slice(2, None)):
            loss.accumulate(terms, logits[sel], ious[sel], scores[sel], targets[sel], 5)
    torch.testing.assert_close(loss.total(terms), ref.float(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- click samplers


def _blobs(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """(n, h, w) bool masks made of a few random rectangles and discs each."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    out = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cx, cy = (
                int(torch.randint(w, (1,), generator=g)),
                int(torch.randint(h, (1,), generator=g)),
            )
            r = int(torch.randint(2, max(3, h // 3), (1,), generator=g))
            if bool(torch.rand(1, generator=g) < 0.5):
                out[i] |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            else:
                out[i] |= ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r // 2 + 1)
    return out


def test_center_click_equals_official_error_center():
    """Eval-mode correction click = sample_one_point_from_error_center (RITM), bitwise,
    wherever the prediction has an error (with none, ours clicks the background, the
    official code the pixel (0, 0))."""
    utils = pytest.importorskip("sam2.modeling.sam2_utils")
    gt, pred = _blobs(40, 37, 45, seed=0), _blobs(40, 37, 45, seed=1)
    pred[:5] = gt[:5] & (torch.rand(5, 37, 45, generator=torch.Generator().manual_seed(3)) < 0.9)
    ref_pts, ref_lab = utils.sample_one_point_from_error_center(gt[:, None], pred[:, None])
    gens = [make_generator(0, i) for i in range(40)]
    pts, lab = sample_correction_clicks(pred, gt, gens, "center")
    has_err = (pred ^ gt).flatten(1).any(1)
    assert has_err.all()
    assert torch.equal(pts, ref_pts[:, 0]) and torch.equal(lab, ref_lab[:, 0].long())


def test_first_center_click_equals_official_get_next_point():
    """The initial eval click (no prediction) = get_next_point(gt, None, "center"): the deepest
    mask pixel, positive."""
    utils = pytest.importorskip("sam2.modeling.sam2_utils")
    gt = _blobs(20, 33, 29, seed=4)
    gt[gt.flatten(1).sum(1) == 0, 5, 5] = True
    ref_pts, ref_lab = utils.get_next_point(gt[:, None], None, "center")
    for i in range(20):
        pts, lab = sample_points(gt[i], 1, make_generator(0, i), method="center")
        assert torch.equal(pts[0], ref_pts[i, 0]) and int(lab[0]) == int(ref_lab[i, 0]) == 1


def test_uniform_clicks_share_the_official_support_and_labels():
    """Training clicks (uniform) land where the official sample_random_points_from_errors can
    land, with its label; with gt_prob 1 they land where get_next_point(gt, None) can (in the
    object, positive; on the background, negative, for an empty target)."""
    pytest.importorskip("sam2.modeling.sam2_utils")
    gt, pred = _blobs(30, 24, 28, seed=6), _blobs(30, 24, 28, seed=7)
    gt[0] = False  # an absent target
    for gt_prob in (0.0, 1.0):
        basis = torch.zeros_like(pred) if gt_prob == 1.0 else pred
        fp = ~gt & basis
        fn = gt & ~basis
        correct = (gt == basis).flatten(1).all(1)[:, None, None]
        allowed_neg = fp | (correct & ~gt)  # the official channel-0 region
        for rep in range(5):
            gens = [make_generator(rep, i) for i in range(30)]
            pts, lab = sample_correction_clicks(pred, gt, gens, "uniform", gt_prob=gt_prob)
            x, y = pts[:, 0].long(), pts[:, 1].long()
            i = torch.arange(30)
            neg_ok = allowed_neg[i, y, x] & (lab == 0)
            pos_ok = fn[i, y, x] & (lab == 1)
            assert bool((neg_ok | pos_ok).all())


def test_exact_box_equals_official_mask_to_box():
    """The noiseless box prompt = the official sample_box_points(noise=0) corners."""
    utils = pytest.importorskip("sam2.modeling.sam2_utils")
    gt = _blobs(10, 30, 40, seed=8)
    gt[:, 3, 3] = True
    ref, labels = utils.sample_box_points(gt[:, None], noise=0.0)
    for i in range(10):
        box = sample_box(gt[i], make_generator(0, i), noise=0.0)
        assert torch.equal(box, mask_to_box(gt[i]))
        assert torch.equal(box.reshape(2, 2), ref[i].float())
    assert labels.tolist() == [[2, 3]] * 10


# ------------------------------------------------------------------------ object-score gating


class _StubPromptEncoder:
    """The official prompt encoder's interface, returning nothing (the stub decoder ignores it)."""

    def __init__(self, mask_input_size: tuple[int, int]) -> None:
        self.mask_input_size = mask_input_size

    def __call__(self, **kwargs):
        return None, None

    def get_dense_pe(self):
        return None


def _stub_sam2_base(low, ious, scores, image_size):
    """A SAM2Base stand-in whose prompt encoder and mask decoder return our decoder's
    (ungated) outputs, so the official _forward_sam_heads applies its own gating to them."""
    b, m, h, w = low.shape
    return types.SimpleNamespace(
        sam_prompt_embed_dim=8,
        sam_image_embedding_size=4,
        sam_prompt_encoder=_StubPromptEncoder((h, w)),
        sam_mask_decoder=lambda **kw: (low, ious, torch.zeros(b, m, 8), scores),
        pred_obj_scores=True,
        image_size=image_size,
        obj_ptr_proj=lambda t: t,
        soft_no_obj_ptr=False,
        fixed_no_obj_ptr=True,
        no_obj_ptr=torch.zeros(8),
    )


def test_gating_equals_official_forward_sam_heads():
    """decode() with object_score_gating = the official _forward_sam_heads on the same
    decoder outputs: the gated multimasks (what the loss sees), the best mask by predicted
    IoU (the next mask prompt) and its upsampling > 0 (the next click's prediction), bitwise."""
    base = pytest.importorskip("sam2.modeling.sam2_base")
    cfg = types.SimpleNamespace(
        seed=0, resolution=64, gradient_checkpointing=False, bf16=False,
        model_name_or_path="sam2-tiny", model_type=None, revision="main",
        freeze_image_encoder=False, freeze_prompt_encoder=False, freeze_mask_decoder=False,
        num_correction_clicks=0, multimask_output=True, loss_focal=20.0, loss_dice=1.0,
        loss_iou=1.0, loss_bce=1.0, iou_loss="l1", focal_alpha=0.25, focal_gamma=2.0,
        extra_loss_weights={}, object_score_gating=True,
    )  # fmt: skip
    model, _ = build_sam2(cfg)
    gated = Sam2ForTraining(model, cfg).train()  # gating is a training-mode behaviour
    plain = Sam2ForTraining(
        model, types.SimpleNamespace(**{**vars(cfg), "object_score_gating": False})
    )
    plain.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        emb = gated.image_embeddings(torch.randn(2, 3, 64, 64, generator=g))
        n = 8
        img = torch.tensor([0, 1] * 4)
        pts = torch.rand(n, 1, 2, generator=g) * 63
        labs = torch.ones(n, 1, dtype=torch.long)
        low0, ious0, sc0 = plain.decode(emb, img, pts, labs, None, True)
        # straddle 0: shift the score head's bias so half the objects are "absent"
        model.mask_decoder.pred_obj_score_head.proj_out.bias -= sc0.median() + 1e-3
        low0, ious0, sc0 = plain.decode(emb, img, pts, labs, None, True)
        low, ious, sc = gated.decode(emb, img, pts, labs, None, True)
    assert 0 < int((sc0 > 0).sum()) < n
    stub = _stub_sam2_base(low0, ious0, sc0, 64)
    out = base.SAM2Base._forward_sam_heads(
        stub, torch.zeros(n, 8, 4, 4), {"point_coords": pts, "point_labels": labs}, None, None, True
    )
    ref_multi, ref_high_multi, ref_ious, ref_low, ref_high, _, ref_sc = out
    assert torch.equal(low, ref_multi) and torch.equal(ious, ref_ious) and torch.equal(sc, ref_sc)
    best_low, _ = Sam2ForTraining._best_by_iou(low, ious)
    assert torch.equal(best_low, ref_low)
    up = torch.nn.functional.interpolate(
        best_low, size=(64, 64), mode="bilinear", align_corners=False
    )
    # the next click's prediction (up > 0): one selected mask upsampled vs three upsampled,
    # then one selected -- another shape, so not the same computation. Measured 0 difference
    # (default and avx2 kernels, and across them); rtol/atol 1e-6 (8 ulp at 1, also for the
    # -1024 of gated masks) keeps the sign of every logit farther than 2e-6 from 0.
    torch.testing.assert_close(up, ref_high, rtol=1e-6, atol=1e-6)
    absent = (sc0 <= 0).squeeze(1)
    assert bool((low[absent] == NO_OBJ_SCORE).all()) and torch.equal(low[~absent], low0[~absent])
