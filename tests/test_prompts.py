"""Prompt samplers and the SAM2 collator: where prompts fall, their labels, and seeding.

Every tensor comparison here is bitwise (``torch.equal``): prompts are seeded draws of pixel
positions, box corners and labels, so the same seed is the same computation and an object's
prompt is the same values wherever it sits in a batch (see tests/equality.py).
"""

from __future__ import annotations

import pickle
import types

import pytest
import torch

from sam_hf.data.collate import Sam2Collator
from sam_hf.data.prompts import (
    BOX_BOTTOM_RIGHT,
    BOX_TOP_LEFT,
    PAD_LABEL,
    derive_seed,
    make_generator,
    mask_to_box,
    sample_box,
    sample_correction_click,
    sample_correction_clicks,
    sample_object_prompt,
    sample_points,
    select_objects,
)


def disc(h: int, w: int, cx: int, cy: int, r: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inside(mask: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return mask[points[:, 1].long(), points[:, 0].long()]


# ------------------------------------------------------------------------------ points


@pytest.mark.parametrize("k", [1, 3, 5])
def test_uniform_points_lie_in_mask_distinct_and_positive(k):
    mask = disc(64, 80, 30, 40, 9)
    for seed in range(20):
        pts, labels = sample_points(mask, k, gen(seed))
        assert pts.shape == (k, 2) and labels.tolist() == [1] * k
        assert inside(mask, pts).all()
        assert len({tuple(p) for p in pts.tolist()}) == k  # without replacement


def test_uniform_points_cover_the_mask_not_one_spot():
    mask = disc(64, 64, 32, 32, 10)
    seen = {tuple(sample_points(mask, 1, gen(s))[0][0].tolist()) for s in range(200)}
    assert len(seen) > 100  # ~317 pixels; uniform draws rarely repeat


def test_center_point_is_the_deepest_pixel_and_extra_points_are_seeded():
    mask = disc(64, 64, 20, 37, 8)
    p1, _ = sample_points(mask, 1, gen(0), method="center")
    p2, _ = sample_points(mask, 1, gen(99), method="center")
    assert p1.tolist() == p2.tolist() == [[20.0, 37.0]]
    a, _ = sample_points(mask, 4, gen(5), method="center")
    b, _ = sample_points(mask, 4, gen(5), method="center")
    c, _ = sample_points(mask, 4, gen(6), method="center")
    assert torch.equal(a, b) and a[0].tolist() == [20.0, 37.0] and not torch.equal(a, c)
    assert inside(mask, a).all() and len({tuple(p) for p in a.tolist()}) == 4


def test_empty_mask_is_rejected():
    with pytest.raises(ValueError, match="empty mask"):
        sample_points(torch.zeros(8, 8, dtype=torch.bool), 1, gen(0))


# ------------------------------------------------------------------------------- boxes


def test_mask_to_box_uses_inclusive_pixel_indices():
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[4:9, 10:21] = True
    assert mask_to_box(mask).tolist() == [10.0, 4.0, 20.0, 8.0]


def test_noisy_box_within_official_bounds():
    h, w = 200, 300
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[50:91, 40:141] = True  # box 40..140 x 50..90: width 100, height 40
    tight = mask_to_box(mask)
    dx, dy = min(0.1 * 100, 20.0), min(0.1 * 40, 20.0)
    bound = torch.tensor([dx, dy, dx, dy])
    boxes = torch.stack(
        [sample_box(mask, gen(s), noise=0.1, noise_max_px=20.0) for s in range(300)]
    )
    dev = (boxes - tight).abs()
    assert (dev <= bound + 1e-5).all()
    # uniform in [-d, d]: the extremes are reached and both signs occur
    assert (dev.max(0).values > 0.9 * bound).all()
    assert ((boxes - tight) > 0).any(0).all() and ((boxes - tight) < 0).any(0).all()


def test_box_noise_cap_in_pixels_and_clamped_to_image():
    mask = torch.zeros(400, 400, dtype=torch.bool)
    mask[0:400, 50:351] = True  # width 300 -> 10 % = 30 px, capped at 20
    tight = mask_to_box(mask)
    for s in range(100):
        box = sample_box(mask, gen(s), noise=0.1, noise_max_px=20.0)
        assert ((box - tight).abs() <= 20.0 + 1e-5).all()
        assert box.min() >= 0 and box[2] <= 399 and box[3] <= 399
        assert box[0] <= box[2] and box[1] <= box[3]


def test_zero_noise_gives_exact_box_and_box_prompt_labels():
    mask = disc(64, 64, 30, 30, 6)
    assert torch.equal(sample_box(mask, gen(0), noise=0.0), mask_to_box(mask))
    pts, labels = sample_object_prompt(mask, gen(0), prompt_type="box", train=False)
    assert labels.tolist() == [BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]
    assert pts.reshape(4).tolist() == mask_to_box(mask).tolist()


def test_mixed_prompts_use_both_kinds_about_half_the_time():
    mask = disc(64, 64, 30, 30, 6)
    kinds = [int(sample_object_prompt(mask, gen(s), prompt_type="mixed")[1][0]) for s in range(400)]
    boxes = sum(k == BOX_TOP_LEFT for k in kinds)
    assert 150 < boxes < 250  # Binomial(400, 0.5): +-5 sigma


# ------------------------------------------------------------------- correction clicks


def test_correction_click_labels_follow_the_error_type():
    gt = disc(48, 48, 24, 24, 10)
    missed = gt.clone()
    missed[:, :24] = False  # prediction misses the left half -> only false negatives
    for s in range(30):
        p, lab = sample_correction_click(missed, gt, gen(s))
        assert lab == 1 and gt[int(p[1]), int(p[0])] and not missed[int(p[1]), int(p[0])]
    extra = gt | disc(48, 48, 5, 5, 4)  # prediction adds a false blob -> only false positives
    for s in range(30):
        p, lab = sample_correction_click(extra, gt, gen(s))
        assert lab == 0 and extra[int(p[1]), int(p[0])] and not gt[int(p[1]), int(p[0])]


def test_correction_clicks_are_uniform_over_all_error_pixels():
    gt = torch.zeros(40, 40, dtype=torch.bool)
    gt[0:20, 0:30] = True  # 600 px
    pred = gt.clone()
    pred[0:20, 0:15] = False  # 300 px false negative
    pred[30:40, 0:10] = True  # 100 px false positive
    labels = [sample_correction_click(pred, gt, gen(s))[1] for s in range(800)]
    share = sum(labels) / len(labels)
    assert abs(share - 0.75) < 0.075  # 300 / 400 of the error pixels, +-5 sigma


def test_correction_click_without_error_goes_to_background_or_object():
    gt = disc(32, 32, 16, 16, 5)
    p, lab = sample_correction_click(gt.clone(), gt, gen(0))
    assert lab == 0 and not gt[int(p[1]), int(p[0])]
    full = torch.ones(16, 16, dtype=torch.bool)
    p, lab = sample_correction_click(full.clone(), full, gen(0))
    assert lab == 1


def test_center_correction_click_is_deterministic_and_deepest():
    gt = torch.zeros(40, 40, dtype=torch.bool)
    gt[5:35, 5:35] = True
    pred = gt.clone()
    pred[5:35, 5:11] = False  # thin false-negative strip, 6 px wide
    pred[20:40, 36:40] = True  # thinner false-positive strip, 4 px wide
    p, lab = sample_correction_click(pred, gt, gen(0), method="center")
    q, _ = sample_correction_click(pred, gt, gen(1), method="center")
    assert torch.equal(p, q) and lab == 1
    assert int(p[0]) in (7, 8)  # middle of columns 5..10


def test_batched_clicks_equal_single_clicks_and_are_seeded():
    gts = torch.stack([disc(32, 32, 10, 10, 5), disc(32, 32, 20, 16, 7)])
    preds = torch.stack([disc(32, 32, 12, 10, 5), torch.zeros(32, 32, dtype=torch.bool)])
    pts, labels = sample_correction_clicks(preds, gts, [gen(1), gen(2)])
    for i, s in enumerate((1, 2)):
        p, lab = sample_correction_click(preds[i], gts[i], gen(s))
        assert torch.equal(pts[i], p) and int(labels[i]) == lab
    again, _ = sample_correction_clicks(preds, gts, [gen(1), gen(2)])
    assert torch.equal(pts, again)


# ------------------------------------------------------------------------ seeds, subsets


def test_derive_seed_is_stable_and_separates_streams():
    assert derive_seed(7, "sam2-prompt", 3) == derive_seed(7, "sam2-prompt", 3)
    assert derive_seed(7, "sam2-prompt", 3) != derive_seed(7, "sam2-prompt", 4)
    assert derive_seed(7, "sam2-prompt", 3) != derive_seed(8, "sam2-prompt", 3)
    assert 0 <= derive_seed(2**63 - 1, "x") < 2**63
    a = torch.rand(3, generator=make_generator(5, "a"))
    assert torch.equal(a, torch.rand(3, generator=make_generator(5, "a")))


def test_select_objects_is_a_seeded_sorted_subset():
    assert select_objects(5, 16, gen(0)).tolist() == [0, 1, 2, 3, 4]
    a = select_objects(40, 16, gen(3))
    assert len(a) == 16 and a.unique().numel() == 16 and torch.equal(a, a.sort().values)
    assert torch.equal(a, select_objects(40, 16, gen(3)))
    assert not torch.equal(a, select_objects(40, 16, gen(4)))


# ------------------------------------------------------------------------------ collator


def make_cfg(**kw):
    d = dict(
        prompt_type="point",
        num_points=1,
        box_noise=0.1,
        box_noise_max_px=20.0,
        mask_prompt_prob=0.0,
        max_objects_per_image=16,
    )
    d.update(kw)
    return types.SimpleNamespace(**d)


def make_sample(index: int, n: int, r: int = 64, orig=(48, 80)) -> dict:
    g = gen(index)
    masks = []
    for _ in range(n):
        cx, cy = torch.randint(10, r - 10, (2,), generator=g).tolist()
        masks.append(disc(r, r, cx, cy, int(torch.randint(3, 8, (1,), generator=g))))
    masks = torch.stack(masks) if n else torch.zeros(0, r, r, dtype=torch.bool)
    h, w = orig
    om = torch.zeros(n, h, w, dtype=torch.bool)
    om[:, : h // 2] = True
    return {
        "pixel_values": torch.randn(3, r, r, generator=g),
        "masks": masks,
        "boxes": torch.zeros(n, 4),
        "image_id": f"img{index}",
        "index": index,
        "orig_size": orig,
        "seed": 1000 + index,
        "orig_masks": om,
    }


def test_collator_pads_objects_and_points_and_skips_empty_images():
    samples = [make_sample(0, 3), make_sample(1, 0), make_sample(2, 1)]
    batch = Sam2Collator(make_cfg(prompt_type="mixed", num_points=3), train=True)(samples)
    assert batch["num_skipped_empty"] == 1 and batch["num_objects"] == 4
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["image_ids"] == ["img0", "img2"] and batch["orig_sizes"] == [(48, 80)] * 2
    assert batch["object_valid"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["masks"][1, 1:].sum() == 0 and batch["object_ids"][1].tolist() == [0, -1, -1]
    n_pts, labels = batch["num_prompt_points"], batch["input_labels"]
    assert labels.shape[-1] == 3
    for b, j in batch["object_valid"].nonzero().tolist():
        k = int(n_pts[b, j])
        assert k in (2, 3) and (labels[b, j, k:] == PAD_LABEL).all()
        pts = batch["input_points"][b, j, :k]
        mask = batch["masks"][b, j]
        if batch["has_box"][b, j]:
            assert labels[b, j, :2].tolist() == [BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]
            assert torch.equal(batch["input_boxes"][b, j], pts.reshape(4))
        else:
            assert (labels[b, j, :k] == 1).all() and inside(mask, pts).all()
    assert (n_pts[~batch["object_valid"]] == 0).all()
    assert [m.shape for m in batch["orig_masks"]] == [(3, 48, 80), (1, 48, 80)]


def test_collator_all_empty_batch_is_well_formed():
    batch = Sam2Collator(make_cfg(), train=True)([make_sample(0, 0), make_sample(1, 0)])
    assert batch["num_skipped_empty"] == 2 and batch["num_objects"] == 0
    assert batch["pixel_values"].shape == (0, 3, 64, 64)
    assert batch["object_valid"].shape == (0, 0) and batch["image_ids"] == []


def test_eval_prompts_depend_only_on_the_sample_seed():
    cfg = make_cfg(prompt_type="mixed", num_points=3)
    alone = Sam2Collator(cfg, train=False)([make_sample(4, 5)])
    mixed = Sam2Collator(cfg, train=False)([make_sample(9, 2), make_sample(4, 5)])
    assert torch.equal(alone["num_prompt_points"][0], mixed["num_prompt_points"][1])
    for j, k in enumerate(alone["num_prompt_points"][0].tolist()):
        assert torch.equal(alone["input_points"][0, j, :k], mixed["input_points"][1, j, :k])
        assert torch.equal(alone["input_labels"][0, j, :k], mixed["input_labels"][1, j, :k])
    again = Sam2Collator(cfg, train=False)([make_sample(4, 5)])
    assert torch.equal(alone["input_points"], again["input_points"])
    # evaluation under `mixed` is one protocol, points (not a point/box draw per object) ...
    assert not alone["has_box"].any()
    # ... and evaluation boxes (prompt_type box) are exact
    boxed = Sam2Collator(make_cfg(prompt_type="box"), train=False)([make_sample(4, 5)])
    m = boxed["masks"][0]
    assert boxed["has_box"][0, :5].all()
    for j in range(5):
        assert boxed["input_boxes"][0, j].tolist() == mask_to_box(m[j]).tolist()


def test_train_caps_objects_eval_keeps_all():
    cfg = make_cfg(max_objects_per_image=3)
    s = make_sample(0, 7)
    train = Sam2Collator(cfg, train=True)([s])
    evalb = Sam2Collator(cfg, train=False)([s])
    assert train["object_valid"].sum() == 3 and evalb["object_valid"].sum() == 7
    kept = train["object_ids"][0]
    assert torch.equal(train["masks"][0], s["masks"][kept])
    assert torch.equal(train["orig_masks"][0], s["orig_masks"][kept])
    # the prompt of an object does not depend on which other objects were drawn
    for j, oid in enumerate(kept.tolist()):
        assert torch.equal(train["input_points"][0, j], _train_prompt(s, oid))


def _train_prompt(s: dict, oid: int) -> torch.Tensor:
    pts, _ = sample_object_prompt(
        s["masks"][oid], make_generator(s["seed"], "sam2-prompt", oid), prompt_type="point"
    )
    return pts


def test_mask_prompt_flags_follow_probability_in_training_only():
    s = [make_sample(0, 4), make_sample(1, 3)]
    on = Sam2Collator(make_cfg(mask_prompt_prob=1.0), train=True)(s)
    off = Sam2Collator(make_cfg(mask_prompt_prob=0.0), train=True)(s)
    ev = Sam2Collator(make_cfg(mask_prompt_prob=1.0), train=False)(s)
    assert torch.equal(on["mask_prompt"], on["object_valid"])
    assert not off["mask_prompt"].any() and not ev["mask_prompt"].any()
    assert torch.equal(on["input_points"], off["input_points"])  # flags do not shift prompts


def test_collator_pickles_and_training_prompts_change_with_the_seed():
    col = pickle.loads(pickle.dumps(Sam2Collator(make_cfg(), train=True)))
    a = col([make_sample(0, 3)])
    b = col([make_sample(0, 3)])
    assert torch.equal(a["input_points"], b["input_points"])
    other = make_sample(0, 3)
    other["seed"] = 5
    c = col([other])
    assert not torch.equal(a["input_points"], c["input_points"])


def test_gt_prob_clicks_come_from_the_ground_truth_alone():
    """gt_prob 1: the prediction is ignored (a positive click in the object, or a negative one
    anywhere for an absent target); gt_prob 0 leaves the generators' streams untouched."""
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(6, 20, 24, generator=g) > 0.7
    gt[0] = False
    pred = torch.rand(6, 20, 24, generator=g) > 0.5
    gens = [make_generator(1, i) for i in range(6)]
    pts, lab = sample_correction_clicks(pred, gt, gens, "uniform", gt_prob=1.0)
    x, y = pts[:, 0].long(), pts[:, 1].long()
    assert lab.tolist() == [0, 1, 1, 1, 1, 1]
    assert bool(gt[torch.arange(6), y, x][1:].all())
    a = sample_correction_clicks(pred, gt, [make_generator(1, i) for i in range(6)], gt_prob=0.0)
    b = sample_correction_clicks(pred, gt, [make_generator(1, i) for i in range(6)])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="gt_prob"):
        sample_correction_clicks(pred, gt, gens, gt_prob=1.5)
