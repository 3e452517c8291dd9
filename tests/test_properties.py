"""Property tests (hypothesis): random masks and polygons never break the RLE code or the
sample transforms, and round trips hold exactly."""

from __future__ import annotations

import io

import datasets
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from pycocotools import mask as mask_utils

from sam_hf.data import rle
from sam_hf.data.schema import FEATURES, make_object
from sam_hf.data.transforms import SegmentationDataset, masks_to_boxes_xyxy

masks_st = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda hw: arrays(np.bool_, hw, elements=st.booleans())
)


@settings(max_examples=150, deadline=None)
@given(masks_st)
def test_rle_round_trip_is_exact(mask):
    r = rle.encode(mask)
    assert isinstance(r["counts"], str)
    assert r["size"] == list(mask.shape)
    np.testing.assert_array_equal(rle.decode(r), mask)
    assert rle.area([r])[0] == mask.sum()


@settings(max_examples=20, deadline=None)
@given(st.lists(arrays(np.bool_, (17, 23), elements=st.booleans()), min_size=0, max_size=300))
def test_area_and_bbox_match_numpy_for_many_masks(masks):
    """Chunked calls never overflow (pycocotools fails on 256+ at once) and agree with numpy."""
    rles = [rle.encode(m) for m in masks]
    np.testing.assert_array_equal(rle.area(rles), [m.sum() for m in masks])
    boxes = rle.to_bbox(rles)
    assert boxes.shape == (len(masks), 4)
    for m, b in zip(masks, boxes):
        if m.any():
            ys, xs = np.nonzero(m)
            assert tuple(b) == (
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            )


coords = st.floats(-20, 80, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(coords, min_size=6, max_size=20).filter(lambda p: len(p) % 2 == 0),
        min_size=1,
        max_size=3,
    )
)
def test_polygons_rasterise_like_pycocotools_and_stay_in_bounds(polys):
    h, w = 50, 60
    r = rle.from_polygons(polys, h, w)
    m = rle.decode(r)
    assert m.shape == (h, w)
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
    np.testing.assert_array_equal(m, ref)


@settings(max_examples=100, deadline=None)
@given(masks_st)
def test_uncompressed_rle_round_trip(mask):
    # build COCO's uncompressed form (column-major run lengths starting with zeros)
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    comp = rle.from_uncompressed({"size": list(mask.shape), "counts": counts})
    np.testing.assert_array_equal(rle.decode(comp), mask)


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, (5, 12, 9), elements=st.booleans()))
def test_boxes_are_tight(masks):
    m = torch.from_numpy(masks)
    boxes = masks_to_boxes_xyxy(m)
    for i in range(len(m)):
        if not m[i].any():
            continue
        x1, y1, x2, y2 = boxes[i].int().tolist()
        assert m[i, y1:y2, x1:x2].sum() == m[i].sum()
        assert (
            m[i, y1, :].any()
            and m[i, y2 - 1, :].any()
            and m[i, :, x1].any()
            and m[i, :, x2 - 1].any()
        )


def _row(masks: list[np.ndarray], h: int, w: int, seed: int) -> dict:
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    objs = [
        make_object(rle.encode(m), [0, 0, 1, 1], float(m.sum()), "thing", "a thing") for m in masks
    ]
    return {
        "image": {"bytes": buf.getvalue(), "path": None},
        "image_id": f"i{seed}",
        "width": w,
        "height": h,
        "objects": objs,
        "negative_phrases": [],
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(8, 70),
    st.integers(8, 70),
    st.integers(0, 4),
    st.integers(0, 2**31 - 1),
    st.sampled_from([16, 32]),
    st.booleans(),
)
def test_transforms_never_crash_and_eval_keeps_every_object(h, w, n, seed, res, train):
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        m = np.zeros((h, w), bool)
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = True
        masks.append(m)
    ds = datasets.Dataset.from_list([_row(masks, h, w, seed)], features=FEATURES)
    sds = SegmentationDataset(
        ds,
        res,
        (0.5,) * 3,
        (0.5,) * 3,
        seed=seed,
        train=train,
        hflip_prob=0.5,
        color_jitter=0.2,
        keep_orig_masks=not train,
    )
    s = sds[0]
    assert s["pixel_values"].shape == (3, res, res)
    assert torch.isfinite(s["pixel_values"]).all()
    assert s["masks"].shape[1:] == (res, res)
    assert s["masks"].flatten(1).any(dim=1).all()  # every returned mask is non-empty
    assert len(s["phrases"]) == len(s["masks"]) == len(s["boxes"])
    if not train:
        assert len(s["masks"]) == n  # evaluation never drops an object
        np.testing.assert_array_equal(
            s["orig_masks"].numpy(), np.stack(masks) if n else np.zeros((0, h, w))
        )
    # the same (seed, epoch, index) gives the same sample: the same computation, bitwise
    again = sds[0]
    assert torch.equal(again["pixel_values"], s["pixel_values"]) and torch.equal(
        again["masks"], s["masks"]
    )


# ----------------------------------------------------------------- prompt samplers

from sam_hf.data.prompts import sample_box, sample_correction_click, sample_points  # noqa: E402

nonempty_masks = masks_st.filter(lambda m: m.any())


@settings(max_examples=80, deadline=None)
@given(
    nonempty_masks,
    st.integers(1, 5),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["uniform", "center"]),
)
def test_points_always_land_inside_the_mask(mask, k, seed, method):
    m = torch.from_numpy(mask)
    k = min(k, int(m.sum()))
    pts, labels = sample_points(m, k, torch.Generator().manual_seed(seed), method=method)
    assert pts.shape == (k, 2) and (labels == 1).all()
    for x, y in pts.round().long().tolist():
        assert m[y, x]
    again, _ = sample_points(m, k, torch.Generator().manual_seed(seed), method=method)
    assert torch.equal(pts, again)  # seeded


@settings(max_examples=80, deadline=None)
@given(nonempty_masks, st.floats(0, 0.5), st.floats(0, 30), st.integers(0, 2**31 - 1))
def test_noisy_boxes_stay_in_the_image_and_within_the_noise_bound(mask, noise, cap, seed):
    m = torch.from_numpy(mask)
    h, w = m.shape
    box = sample_box(m, torch.Generator().manual_seed(seed), noise=noise, noise_max_px=cap)
    exact = sample_box(m, torch.Generator().manual_seed(seed), noise=0.0, noise_max_px=cap)
    x1, y1, x2, y2 = box.tolist()
    assert 0 <= x1 <= x2 <= w - 1 and 0 <= y1 <= y2 <= h - 1
    bw, bh = float(exact[2] - exact[0]), float(exact[3] - exact[1])
    dx, dy = min(noise * bw, cap), min(noise * bh, cap)
    assert (box[[0, 2]] - exact[[0, 2]]).abs().max() <= dx + 1e-4
    assert (box[[1, 3]] - exact[[1, 3]]).abs().max() <= dy + 1e-4


@settings(max_examples=80, deadline=None)
@given(
    st.tuples(st.integers(2, 30), st.integers(2, 30)).flatmap(
        lambda hw: st.tuples(
            arrays(np.bool_, hw, elements=st.booleans()),
            arrays(np.bool_, hw, elements=st.booleans()),
        )
    ),
    st.integers(0, 2**31 - 1),
)
def test_correction_click_sits_in_the_error_region_with_the_right_label(pair, seed):
    pred, gt = (torch.from_numpy(a) for a in pair)
    point, label = sample_correction_click(pred, gt, torch.Generator().manual_seed(seed))
    x, y = point.round().long().tolist()
    assert 0 <= x < gt.shape[1] and 0 <= y < gt.shape[0]
    if (pred != gt).any():
        assert pred[y, x] != gt[y, x]  # always on an error pixel
        assert label == (1 if gt[y, x] else 0)  # missed pixel: positive; false positive: negative


# --------------------------------------------------------------------- converters


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.integers(0, 2**31 - 1), st.integers(0, 12), st.sampled_from(["uint8", "uint16"]))
def test_minneapple_converter_round_trips_random_instance_maps(tmp_path_factory, seed, n, dtype):
    """Every id of a random instance-id PNG becomes one object whose RLE decodes to mask == id."""
    from sam_hf.data.sources.minneapple import convert_minneapple

    rng = np.random.default_rng(seed)
    root = tmp_path_factory.mktemp("ma")
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "masks").mkdir(parents=True)
    h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
    label = np.zeros((h, w), dtype=dtype)
    for i in range(1, n + 1):  # random blobs, later ones occlude earlier ones; some vanish
        y, x = rng.integers(0, h), rng.integers(0, w)
        label[y : y + rng.integers(1, 9), x : x + rng.integers(1, 9)] = i
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        root / "train" / "images" / "a.png"
    )
    Image.fromarray(label).save(root / "train" / "masks" / "a.png")
    dd = convert_minneapple(root, val_fraction=0.0, seed=0, cache_dir=str(root / "cache"))
    objs = dd["train"][0]["objects"]
    ids = [i for i in range(1, n + 1) if (label == i).any()]
    assert len(objs) == len(ids)
    for i, obj in zip(ids, objs):
        np.testing.assert_array_equal(rle.decode(obj["segmentation"]), label == i)
        assert obj["area"] == (label == i).sum()
