"""SAM3 query sampling (positives, negatives, hard negatives) and the SAM3 collator."""

from __future__ import annotations

import io
import math
import pickle
import types

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from sam_hf.data import rle
from sam_hf.data.queries import PhraseVocab, QueryStats, Sam3Collator, sample_queries
from sam_hf.data.schema import FEATURES, make_object
from sam_hf.data.tokenizer import build_clip_tokenizer

RES = 32


def _disc(cx: float, cy: float, r: float, res: int = RES) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _sample(
    phrases: list[str],
    categories: list[str] | None = None,
    attributes: list[dict[str, str]] | None = None,
    negative_phrases: list[str] | None = None,
    seed: int = 0,
) -> dict:
    """A sample dict per the transforms contract: one disc per instance."""
    n = len(phrases)
    gen = torch.Generator().manual_seed(seed + 1000)
    masks = [_disc(*(torch.rand(2, generator=gen) * 20 + 6).tolist(), 4) for _ in range(n)]
    masks_t = torch.stack(masks) if masks else torch.zeros((0, RES, RES), dtype=torch.bool)
    boxes = []
    for m in masks:
        ys, xs = m.nonzero(as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return {
        "pixel_values": torch.randn(3, RES, RES, generator=gen),
        "masks": masks_t,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "phrases": phrases,
        "categories": categories
        if categories is not None
        else [p.split()[-1] if p else "" for p in phrases],
        "attributes": attributes if attributes is not None else [{} for _ in phrases],
        "negative_phrases": negative_phrases or [],
        "image_id": f"img{seed}",
        "index": seed,
        "orig_size": (RES * 2, RES * 3),
        "seed": seed,
        "orig_masks": torch.zeros((n, RES * 2, RES * 3), dtype=torch.bool),
    }


def _cfg(**kw) -> types.SimpleNamespace:
    base = dict(negative_ratio=0.2, max_phrases_per_image=8, hard_negatives=True)
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


APPLES = {
    "phrases": ["ripe red apple", "ripe red apple", "leaf"],
    "categories": ["apple", "apple", "leaf"],
    "attributes": [{"color": "red", "ripeness": "ripe"}, {"color": "red", "ripeness": "ripe"}, {}],
}
VOCAB = PhraseVocab(
    phrase_categories={
        "ripe red apple": {"apple"},
        "unripe green apple": {"apple"},
        "leaf": {"leaf"},
        "pear": {"pear"},
        "blue car": {"car"},
        "red disc": {"disc"},
        "old apple tree": {"tree"},
    },
    attribute_values={"color": ["green", "red", "yellow"], "ripeness": ["ripe", "unripe"]},
)


def test_positive_queries_and_targets() -> None:
    s = _sample(**APPLES)
    qs = sample_queries(s, VOCAB, negative_ratio=0.0)
    assert [(q.phrase, q.targets, q.is_negative) for q in qs] == [
        ("ripe red apple", [0, 1], False),
        ("leaf", [2], False),
    ]
    # Attribute phrases carry candidates for attribute accuracy: same-category instances.
    assert qs[0].candidates == [0, 1] and qs[0].candidate_labels == [True, True]
    assert qs[1].candidates is None


def test_category_phrase_targets_every_instance_of_the_category() -> None:
    s = _sample(["red apple", "apple", "green apple"], ["apple"] * 3)
    qs = {q.phrase: q.targets for q in sample_queries(s, None, negative_ratio=0.0)}
    assert qs == {"red apple": [0], "apple": [0, 1, 2], "green apple": [2]}


def test_phrases_are_normalised_before_grouping() -> None:
    s = _sample(["Red  Disc", "red disc "], ["disc", "disc"])
    qs = sample_queries(s, None, negative_ratio=0.0)
    assert [(q.phrase, q.targets) for q in qs] == [("red disc", [0, 1])]


def test_hard_negatives_are_really_absent() -> None:
    s = _sample(**APPLES, seed=3)
    qs = sample_queries(s, VOCAB, negative_ratio=50.0, hard_negatives=True)
    hard = [q for q in qs if q.source == "attribute"]
    assert sorted(q.phrase for q in hard) == [
        "ripe green apple",
        "ripe yellow apple",
        "unripe red apple",
    ]
    for q in hard:
        assert q.is_negative and q.is_attribute and q.targets == []
        assert q.candidates == [0, 1] and q.candidate_labels == [False, False]
    # No instance has any of these attribute combinations.
    combos = {(a.get("color"), a.get("ripeness")) for a in APPLES["attributes"]}
    assert combos.isdisjoint({("green", "ripe"), ("yellow", "ripe"), ("red", "unripe")})
    assert all(not q.is_attribute for q in qs if q.source != "attribute")


def test_hard_negative_not_made_when_an_instance_could_match() -> None:
    # A green apple is present, and a third apple has no colour annotation: "green"/"yellow"
    # swaps could describe something here, so only the ripeness swap is a safe negative.
    s = _sample(
        ["red apple", "green apple", "apple"],
        ["apple"] * 3,
        [
            {"color": "red", "ripeness": "ripe"},
            {"color": "green", "ripeness": "ripe"},
            {"ripeness": "ripe"},
        ],
    )
    qs = sample_queries(s, VOCAB, negative_ratio=50.0)
    hard = sorted(q.phrase for q in qs if q.source == "attribute")
    # "red apple" -> "unripe red apple" etc. (ripeness not in the phrase: prepended).
    assert hard == ["unripe apple", "unripe green apple", "unripe red apple"]
    off = sample_queries(s, VOCAB, negative_ratio=50.0, hard_negatives=False)
    assert not any(q.is_attribute for q in off)


def test_vocab_negatives_exclude_phrases_that_may_be_present() -> None:
    s = _sample(**APPLES, negative_phrases=["pear", "leaf", "  "])
    stats = QueryStats()
    qs = sample_queries(s, VOCAB, negative_ratio=50.0, hard_negatives=False, stats=stats)
    neg = {q.phrase: q.source for q in qs if q.is_negative}
    # "leaf" is present (annotated negative contradicting a positive: dropped); the apple
    # phrases and "old apple tree" mention a present category; "pear" is annotated.
    assert neg == {"pear": "annotated", "blue car": "vocab", "red disc": "vocab"}
    assert stats.num_empty_phrases == 1


@pytest.mark.parametrize("n_pos", [0, 1, 3, 5, 6, 10, 11])
def test_negative_ratio(n_pos: int) -> None:
    vocab = PhraseVocab.coerce([f"thing{i}" for i in range(40)])
    s = _sample([f"object{i}" for i in range(n_pos)], seed=n_pos)
    qs = sample_queries(s, vocab, negative_ratio=0.2, max_phrases_per_image=0)
    assert sum(not q.is_negative for q in qs) == n_pos
    assert sum(q.is_negative for q in qs) == max(1, math.ceil(0.2 * n_pos))
    assert not any(q.is_negative for q in sample_queries(s, vocab, negative_ratio=0.0))
    half = sample_queries(s, vocab, negative_ratio=0.5, max_phrases_per_image=0)
    assert sum(q.is_negative for q in half) == max(1, math.ceil(n_pos / 2))


def test_sampling_is_seeded_per_sample() -> None:
    vocab = PhraseVocab.coerce([f"thing{i}" for i in range(40)])
    phrases = [f"object{i}" for i in range(12)]

    def draw(seed: int) -> list[tuple[str, bool]]:
        qs = sample_queries(_sample(phrases, seed=seed), vocab, 0.2, 8, train=True)
        return [(q.phrase, q.is_negative) for q in qs]

    assert draw(5) == draw(5)
    assert len({tuple(draw(s)) for s in range(8)}) > 1  # the seed, not a global stream, decides
    assert len([p for p, neg in draw(5) if not neg]) == 8  # max_phrases_per_image in training
    eval_qs = sample_queries(_sample(phrases, seed=5), vocab, 0.2, 8, train=False)
    assert sum(not q.is_negative for q in eval_qs) == 12  # evaluation keeps every phrase
    eval_again = sample_queries(_sample(phrases, seed=5), vocab, 0.2, 8, train=False)
    assert [q.phrase for q in eval_qs] == [q.phrase for q in eval_again]


def test_image_without_objects_yields_only_negatives(tokenizer) -> None:
    s = _sample([], negative_phrases=["apple"])
    qs = sample_queries(s, VOCAB)
    assert len(qs) == 1 and qs[0].is_negative and qs[0].targets == []
    batch = Sam3Collator(_cfg(), VOCAB, tokenizer, train=True)([s])
    assert batch["is_negative"].tolist() == [True]
    assert batch["num_targets"].tolist() == [0]
    assert batch["target_masks"].shape == (0, RES, RES) and batch["target_boxes"].shape == (0, 4)


def test_empty_phrases_are_skipped_and_counted(tokenizer) -> None:
    s = _sample(["red disc", "", "   "], ["disc", "", ""], negative_phrases=[""])
    col = Sam3Collator(_cfg(negative_ratio=0.0), None, tokenizer, train=True)
    batch = col([s, s])
    assert batch["phrases"] == ["red disc", "red disc"]
    assert batch["num_empty_phrases"] == 6 and col.num_empty_phrases == 6


def test_collator_batch_layout(tokenizer) -> None:
    a = _sample(**APPLES, negative_phrases=["pear"], seed=1)
    b = _sample(["red disc"], ["disc"], [{"color": "red"}], seed=2)
    vocab = PhraseVocab.from_rows([a, b])
    train_col = Sam3Collator(_cfg(), vocab, tokenizer, train=True)
    batch = train_col([a, b])
    q = len(batch["phrases"])
    assert batch["pixel_values"].shape == (2, 3, RES, RES)
    assert batch["input_ids"].shape == (q, 32) and batch["attention_mask"].shape == (q, 32)
    assert batch["query_image"].tolist() == [0, 0, 0, 1, 1]
    assert batch["phrases"][:2] == ["ripe red apple", "leaf"] and batch["phrases"][3] == "red disc"
    assert batch["num_targets"].tolist()[:2] == [2, 1] and batch["num_targets"][3] == 1
    # Targets are concatenated in query order; boxes are normalised xyxy (the collator divides
    # by RES as well: the same computation, bitwise).
    assert torch.equal(batch["target_boxes"][:2], a["boxes"][:2] / RES)
    assert torch.equal(batch["target_boxes"][3], b["boxes"][0] / RES)
    assert torch.equal(batch["target_masks"][:3], a["masks"])
    assert batch["target_masks"].dtype == torch.bool
    # Image b has a red disc and the vocabulary knows "red" only: no hard negative, and the
    # only vocabulary phrases (apple, leaf) are absent from it.
    assert batch["phrases"][4] in ("ripe red apple", "leaf") and batch["is_negative"][4]
    assert "orig_masks" not in batch

    eval_batch = Sam3Collator(_cfg(), vocab, tokenizer, train=False)([a, b])
    assert [m.shape for m in eval_batch["orig_masks"]] == [(3, 64, 96), (1, 64, 96)]
    assert eval_batch["query_targets"][0].tolist() == [0, 1]
    assert eval_batch["candidates"][0].tolist() == [0, 1]
    assert eval_batch["candidate_labels"][0].tolist() == [True, True]
    del a["orig_masks"]
    with pytest.raises(ValueError, match="keep_orig_masks=True"):
        Sam3Collator(_cfg(), vocab, tokenizer, train=False)([a, b])


def test_vocab_from_schema_dataset() -> None:
    def png() -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="PNG")
        return buf.getvalue()

    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 2:5] = True
    seg = rle.encode(mask)
    rows = [
        {
            "image": {"bytes": png(), "path": None},
            "image_id": "a",
            "width": 8,
            "height": 8,
            "objects": [
                make_object(seg, [2, 2, 3, 3], 9, "apple", "Red Apple", {"color": "red"}),
                make_object(seg, [2, 2, 3, 3], 9, "apple", "", {"color": "green"}),
                make_object(seg, [2, 2, 3, 3], 9, "crowd", "crowd", {}, iscrowd=True),
            ],
            "negative_phrases": ["pear"],
        }
    ]
    ds = datasets.Dataset.from_list(rows, features=FEATURES)
    vocab = PhraseVocab.from_dataset(ds)
    assert vocab.phrases == ["apple", "red apple"]
    assert vocab.phrase_categories == {"red apple": {"apple"}, "apple": {"apple"}}
    assert vocab.attribute_values == {"color": ["green", "red"]}


def test_invalid_ratio() -> None:
    with pytest.raises(ValueError, match="negative_ratio must be >= 0"):
        sample_queries(_sample(["a"]), None, negative_ratio=-0.1)


def test_collator_pickles_for_dataloader_workers(tokenizer) -> None:
    a = _sample(**APPLES, negative_phrases=["pear"], seed=4)
    col = Sam3Collator(_cfg(), VOCAB, tokenizer, train=True)
    clone = pickle.loads(pickle.dumps(col))
    x, y = col([a]), clone([a])  # the same collator (pickled) on the same sample: bitwise
    assert x["phrases"] == y["phrases"]
    assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(
        x["target_masks"], y["target_masks"]
    )
