"""SAM3 text queries per image (positives + known-absent negatives) and the SAM3 collator.

SAM3 is trained on (image, noun phrase) pairs: for a phrase that occurs, it must find every
instance the phrase describes; for a phrase that does not occur, it must say "nothing here".
Queries are sampled per step from the ground truth, seeded by the sample's seed, never stored.

Per image:

- one **positive** query per distinct noun phrase (phrases compared after lower-casing and
  collapsing whitespace, since CLIP's tokenizer does the same). Its targets are the instances
  annotated with that phrase, plus -- when the phrase is a category name, e.g. "apple" -- every
  instance of that category ("apple" describes the "red apple"s too). At most
  ``max_phrases_per_image`` positives are kept in training (a seeded random subset; 0 = all);
  evaluation keeps all of them.
- **negatives**: ``n = max(1, ceil(negative_ratio * n_positive))`` when ``negative_ratio > 0``
  (0 otherwise): 0.2 gives 1 negative for 1-5 positives, 2 for 6-10, and an image without
  objects still gets 1. Rounding up (not to nearest) means every image with a phrase gets a
  negative, which is what teaches the presence head. Negatives come from three pools of phrases
  known to be absent, each draw picking a non-empty pool uniformly and then a phrase in it
  uniformly (so a dataset vocabulary of thousands of phrases does not drown the few hard
  negatives):

  * ``annotated``: the image's ``negative_phrases`` (exhaustively checked by the annotator);
  * ``vocab``: phrases of other images (``phrase_vocab``) that cannot describe anything here:
    not one of the image's phrases or categories, not a phrase whose own category occurs in
    the image, and not containing an occurring category as a word ("red apple" is never a
    vocabulary negative for an image with apples -- it might be present unannotated);
  * ``attribute`` (``hard_negatives: true``): an instance's phrase with one attribute value
    swapped for another value seen in the dataset for that key ("green apple" from "red apple"),
    kept only if no instance of that category in the image could match the resulting attribute
    combination (an instance lacking one of the attributes counts as a possible match). These
    queries are flagged ``is_attribute`` so ``loss_attribute`` can weight them.

  Evaluation uses every annotated negative plus ``n`` draws from the other two pools.
- empty phrases (an instance with neither noun phrase nor category, or an empty negative
  phrase) are skipped and counted (``num_empty_phrases`` in each batch).

Randomness: a generator seeded from the sample's ``seed`` (mixed with a fixed stream id so the
draws differ from the transform's flip/jitter draws made from the same seed), so workers,
ranks and a resumed run draw the same queries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sam_hf.data.tokenizer import PhraseTokenizer

#: Mixed into the sample seed so query draws are independent of the transform's draws.
_QUERY_STREAM = 0x53414D33  # "SAM3"


def normalize_phrase(text: str) -> str:
    """Lower-case and collapse whitespace (what CLIP's tokenizer sees)."""
    return " ".join(str(text).split()).lower()


def _contains_words(text: str, words: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(words) + r"(?!\w)", text) is not None


def query_generator(seed: int) -> torch.Generator:
    """The query sampler's generator for a sample seed (independent of the transform's)."""
    mixed = np.random.SeedSequence([int(seed) & ((1 << 63) - 1), _QUERY_STREAM]).generate_state(2)
    return torch.Generator().manual_seed(int((int(mixed[0]) << 31) ^ int(mixed[1])))


@dataclass
class PhraseVocab:
    """What the dataset says about phrases, needed to draw negatives for one image.

    ``phrase_categories`` maps each normalised phrase of the dataset to the categories of the
    instances it labels; ``attribute_values`` maps each attribute key to the values seen for
    it (sorted). Build it once from the training split with :meth:`from_dataset`.
    """

    phrase_categories: dict[str, set[str]] = field(default_factory=dict)
    attribute_values: dict[str, list[str]] = field(default_factory=dict)

    @property
    def phrases(self) -> list[str]:
        return sorted(self.phrase_categories)

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> PhraseVocab:
        """From schema rows (with ``objects``) or transformed sample dicts (``phrases``...)."""
        cats: dict[str, set[str]] = {}
        values: dict[str, set[str]] = {}
        for row in rows:
            for phrase, category, attrs in _instances_of(row):
                p = normalize_phrase(phrase or category)
                if p:
                    cats.setdefault(p, set()).add(normalize_phrase(category))
                for k, v in attrs.items():
                    k, v = normalize_phrase(k), normalize_phrase(v)
                    if k and v:
                        values.setdefault(k, set()).add(v)
        return cls(cats, {k: sorted(v) for k, v in values.items()})

    @classmethod
    def from_dataset(cls, hf_dataset: Any) -> PhraseVocab:
        """From a schema ``datasets.Dataset`` (reads only the ``objects`` column, no images)."""
        if hasattr(hf_dataset, "select_columns"):
            hf_dataset = hf_dataset.select_columns(["objects"])
        return cls.from_rows(hf_dataset)

    @classmethod
    def coerce(cls, vocab: PhraseVocab | Iterable[str] | None) -> PhraseVocab:
        """Accept a PhraseVocab, a plain list of phrases (categories unknown) or None."""
        if vocab is None:
            return cls()
        if isinstance(vocab, PhraseVocab):
            return vocab
        return cls({normalize_phrase(p): set() for p in vocab if normalize_phrase(p)}, {})


def _instances_of(row: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(phrase, category, attributes) per instance of a schema row or a sample dict."""
    if "objects" in row:
        out = []
        for o in row["objects"]:
            if o.get("iscrowd"):
                continue
            a = o.get("attributes") or {}
            attrs = dict(zip(a.get("keys", []), a.get("values", []))) if "keys" in a else dict(a)
            out.append((o.get("noun_phrase") or "", o.get("category") or "", attrs))
        return out
    cats = row.get("categories") or [""] * len(row.get("phrases", []))
    attrs = row.get("attributes") or [{}] * len(row.get("phrases", []))
    return [(p, c, a) for p, c, a in zip(row.get("phrases", []), cats, attrs)]


@dataclass
class Query:
    """One (image, phrase) query: its targets (instance indices) and flags."""

    phrase: str
    targets: list[int]
    is_negative: bool
    is_attribute: bool = False
    source: str = "positive"  # positive | annotated | vocab | attribute
    #: For attribute accuracy: instances of the phrase's category and whether it describes each.
    candidates: list[int] | None = None
    candidate_labels: list[bool] | None = None


@dataclass
class QueryStats:
    """Per-call counts of skipped inputs."""

    num_empty_phrases: int = 0


def _hard_negatives(
    phrases: list[str],
    categories: list[str],
    attrs: list[dict[str, str]],
    vocab: PhraseVocab,
    taken: set[str],
) -> dict[str, list[int]]:
    """Attribute-swapped phrases no instance here can match -> candidate instances (same category)."""
    out: dict[str, list[int]] = {}
    for i, (phrase, cat) in enumerate(zip(phrases, categories)):
        if not phrase or not attrs[i]:
            continue
        expressed = {k: v for k, v in attrs[i].items() if _contains_words(phrase, v)}
        same_cat = [j for j, c in enumerate(categories) if c == cat]
        for key, value in sorted(attrs[i].items()):
            for alt in vocab.attribute_values.get(key, []):
                if alt == value:
                    continue
                if key in expressed:
                    pattern = r"(?<!\w)" + re.escape(value) + r"(?!\w)"
                    text = normalize_phrase(re.sub(pattern, alt, phrase, count=1))
                else:
                    text = normalize_phrase(f"{alt} {phrase}")
                if text in taken or text in out:
                    continue
                wanted = {**expressed, key: alt}
                could_match = any(
                    all(attrs[j].get(k) in (v, None) for k, v in wanted.items()) for j in same_cat
                )
                if not could_match:
                    out[text] = same_cat
    return out


@dataclass
class _SampleInstances:
    """Normalised phrase, category and attributes of each instance of a sample dict."""

    phrases: list[str]
    categories: list[str]
    attrs: list[dict[str, str]]

    @classmethod
    def of(cls, sample: dict[str, Any]) -> _SampleInstances:
        raw = list(sample.get("phrases", []))
        n_inst = len(raw)
        phrases = [normalize_phrase(p) for p in raw]
        categories = [normalize_phrase(c) for c in (sample.get("categories") or [""] * n_inst)]
        attrs = [
            {
                normalize_phrase(k): normalize_phrase(v)
                for k, v in (a or {}).items()
                if normalize_phrase(v)
            }
            for a in (sample.get("attributes") or [{}] * n_inst)
        ]
        return cls(phrases, categories, attrs)


def sample_queries(
    sample: dict[str, Any],
    vocab: PhraseVocab | Iterable[str] | None = None,
    negative_ratio: float = 0.2,
    max_phrases_per_image: int = 8,
    hard_negatives: bool = True,
    train: bool = True,
    stats: QueryStats | None = None,
) -> list[Query]:
    """Positive and negative queries of one sample dict (see the module docstring)."""
    if negative_ratio < 0:
        raise ValueError(f"negative_ratio must be >= 0, got {negative_ratio}.")
    vocab = PhraseVocab.coerce(vocab)
    stats = stats if stats is not None else QueryStats()
    gen = query_generator(sample.get("seed", 0))
    inst = _SampleInstances.of(sample)

    # Positives, in order of first appearance.
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(inst.phrases):
        if not p:
            stats.num_empty_phrases += 1
            continue
        groups.setdefault(p, []).append(i)
    present_cats = {c for c in inst.categories if c}
    for p, members in groups.items():
        if p in present_cats:
            groups[p] = sorted(set(members) | {i for i, c in enumerate(inst.categories) if c == p})
    pos_phrases = list(groups)
    if train and max_phrases_per_image > 0 and len(pos_phrases) > max_phrases_per_image:
        keep = torch.randperm(len(pos_phrases), generator=gen)[:max_phrases_per_image]
        pos_phrases = [pos_phrases[i] for i in sorted(keep.tolist())]
    queries = [_positive_query(p, groups[p], inst) for p in pos_phrases]

    n_neg = 0
    if negative_ratio > 0:
        n_neg = max(1, math.ceil(negative_ratio * len(pos_phrases) - 1e-9))
    taken = set(groups) | present_cats  # phrases that (may) describe something here
    hard, pools = _negative_pools(sample, inst, vocab, taken, hard_negatives, stats)
    if not train:
        queries.extend(_negative_query(p, "annotated", hard) for p in pools["annotated"])
        pools["annotated"] = []
    for _ in range(n_neg):
        names = [k for k in ("attribute", "annotated", "vocab") if pools[k]]
        if not names:
            break
        name = names[int(torch.randint(len(names), (1,), generator=gen))]
        pool = pools[name]
        phrase = pool.pop(int(torch.randint(len(pool), (1,), generator=gen)))
        queries.append(_negative_query(phrase, name, hard))
    return queries


def _positive_query(phrase: str, targets: list[int], inst: _SampleInstances) -> Query:
    """The query of a phrase that occurs; with attributes, its category's instances are the
    candidates of the attribute accuracy."""
    q = Query(phrase=phrase, targets=targets, is_negative=False, source="positive")
    if any(inst.attrs[i] for i in targets):
        cats = {inst.categories[i] for i in targets}
        cands = [j for j, c in enumerate(inst.categories) if c in cats]
        q.candidates = cands
        q.candidate_labels = [j in set(targets) for j in cands]
    return q


def _negative_pools(
    sample: dict[str, Any],
    inst: _SampleInstances,
    vocab: PhraseVocab,
    taken: set[str],
    hard_negatives: bool,
    stats: QueryStats,
) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """The attribute swaps (phrase -> candidate instances) and the three negative pools."""
    annotated: list[str] = []
    for p in sample.get("negative_phrases") or []:
        p = normalize_phrase(p)
        if not p:
            stats.num_empty_phrases += 1
        elif p not in taken and p not in annotated:
            annotated.append(p)
    present_cats = {c for c in inst.categories if c}
    vocab_neg = [
        p
        for p in vocab.phrases
        if p not in taken
        and p not in annotated
        and not (vocab.phrase_categories.get(p, set()) & present_cats)
        and not any(_contains_words(p, c) for c in present_cats)
    ]
    hard = (
        _hard_negatives(inst.phrases, inst.categories, inst.attrs, vocab, taken | set(annotated))
        if hard_negatives
        else {}
    )
    vocab_neg = [p for p in vocab_neg if p not in hard]
    return hard, {"attribute": sorted(hard), "annotated": annotated, "vocab": vocab_neg}


def _negative_query(phrase: str, source: str, hard: dict[str, list[int]]) -> Query:
    if source == "attribute":
        cands = hard[phrase]
        return Query(phrase, [], True, True, source, list(cands), [False] * len(cands))
    return Query(phrase, [], True, False, source)


def candidate_phrases(
    rows: Iterable[dict[str, Any]], vocab: PhraseVocab, hard_negatives: bool = True
) -> set[str]:
    """Every phrase :func:`sample_queries` can draw for these schema rows (normalised).

    Positives (noun phrase, or the category standing in), annotated negatives, the vocabulary
    negatives and, with ``hard_negatives``, each image's attribute swaps computed from its full
    annotation. What SAM3's phrase feature cache is filled with; a training sample whose tiny
    objects vanished at the model resolution can still draw a swap that is not in this set
    (the cache encodes such a phrase on first use).
    """
    out = set(vocab.phrases)
    for row in rows:
        inst = _instances_of(row)
        phrases = [normalize_phrase(p or c) for p, c, _ in inst]
        categories = [normalize_phrase(c) for _, c, _ in inst]
        attrs = [
            {normalize_phrase(k): normalize_phrase(v) for k, v in a.items() if normalize_phrase(v)}
            for _, _, a in inst
        ]
        negatives = {normalize_phrase(p) for p in row.get("negative_phrases") or []}
        out.update(phrases)
        out.update(negatives)
        if hard_negatives:
            taken = set(phrases) | {c for c in categories if c} | negatives
            out.update(_hard_negatives(phrases, categories, attrs, vocab, taken))
    out.discard("")
    return out


class Sam3Collator:
    """Turn SAM3 sample dicts into one batch of images and (image, phrase) queries.

    Batch keys (Q queries over B images, T targets over all queries):

    - ``pixel_values`` (B, 3, R, R); ``image_ids`` list[str]; ``orig_sizes`` list[(H, W)];
    - ``input_ids``, ``attention_mask`` (Q, 32): tokenised phrases; ``phrases`` list[str];
    - ``query_image`` (Q,) long: the image each query belongs to;
    - ``is_negative``, ``is_attribute`` (Q,) bool; ``num_targets`` (Q,) long;
    - ``target_masks`` (T, R, R) bool and ``target_boxes`` (T, 4) float: the targets of query 0,
      then query 1, ...; boxes are **normalised xyxy** in [0, 1] (x / R), SAM3's ``pred_boxes``
      convention;
    - ``num_empty_phrases``, ``num_truncated``: ints for this batch (the collator's own
      counters live in its worker process and are not visible to the trainer);
    - evaluation only (``train=False``): ``orig_masks`` list of (N_b, H, W) bool per image,
      ``query_targets`` list of (G_q,) long instance indices per query, and ``candidates`` /
      ``candidate_labels`` per query (long indices / bool, or None) for attribute accuracy.
    """

    def __init__(
        self,
        cfg: Any,
        phrase_vocab: PhraseVocab | Iterable[str] | None,
        tokenizer: Any,
        train: bool,
    ) -> None:
        self.negative_ratio = float(getattr(cfg, "negative_ratio", 0.2))
        self.max_phrases_per_image = int(getattr(cfg, "max_phrases_per_image", 8))
        self.hard_negatives = bool(getattr(cfg, "hard_negatives", True))
        self.vocab = PhraseVocab.coerce(phrase_vocab)
        self.text = (
            tokenizer if isinstance(tokenizer, PhraseTokenizer) else PhraseTokenizer(tokenizer)
        )
        self.train = bool(train)
        self.num_empty_phrases = 0

    @property
    def num_truncated(self) -> int:
        return self.text.num_truncated

    def queries(self, sample: dict[str, Any], stats: QueryStats | None = None) -> list[Query]:
        return sample_queries(
            sample,
            self.vocab,
            self.negative_ratio,
            self.max_phrases_per_image,
            self.hard_negatives,
            self.train,
            stats,
        )

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("Sam3Collator got an empty list of samples.")
        stats = QueryStats()
        res = samples[0]["pixel_values"].shape[-1]
        phrases: list[str] = []
        query_image: list[int] = []
        is_neg: list[bool] = []
        is_attr: list[bool] = []
        num_t: list[int] = []
        masks: list[torch.Tensor] = []
        boxes: list[torch.Tensor] = []
        q_targets: list[torch.Tensor] = []
        cands: list[torch.Tensor | None] = []
        cand_labels: list[torch.Tensor | None] = []
        for b, s in enumerate(samples):
            for q in self.queries(s, stats):
                idx = torch.tensor(q.targets, dtype=torch.long)
                phrases.append(q.phrase)
                query_image.append(b)
                is_neg.append(q.is_negative)
                is_attr.append(q.is_attribute)
                num_t.append(len(q.targets))
                masks.append(s["masks"][idx].bool())
                boxes.append(s["boxes"][idx].float() / res)
                q_targets.append(idx)
                cands.append(
                    None if q.candidates is None else torch.tensor(q.candidates, dtype=torch.long)
                )
                cand_labels.append(
                    None
                    if q.candidate_labels is None
                    else torch.tensor(q.candidate_labels, dtype=torch.bool)
                )
        self.num_empty_phrases += stats.num_empty_phrases
        before = self.text.num_truncated
        tok = self.text(phrases)
        batch: dict[str, Any] = {
            "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
            "image_ids": [s.get("image_id", str(s.get("index", i))) for i, s in enumerate(samples)],
            "orig_sizes": [tuple(int(v) for v in s.get("orig_size", (res, res))) for s in samples],
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
            "phrases": phrases,
            "query_image": torch.tensor(query_image, dtype=torch.long),
            "is_negative": torch.tensor(is_neg, dtype=torch.bool),
            "is_attribute": torch.tensor(is_attr, dtype=torch.bool),
            "num_targets": torch.tensor(num_t, dtype=torch.long),
            "target_masks": torch.cat(masks)
            if masks
            else torch.zeros((0, res, res), dtype=torch.bool),
            "target_boxes": (torch.cat(boxes) if boxes else torch.zeros((0, 4))).clamp(0.0, 1.0),
            "num_empty_phrases": stats.num_empty_phrases,
            "num_truncated": self.text.num_truncated - before,
        }
        if not self.train:
            if any("orig_masks" not in s for s in samples):
                raise ValueError(
                    "Evaluation batches need 'orig_masks' in every sample: build the "
                    "SegmentationDataset with keep_orig_masks=True."
                )
            batch["orig_masks"] = [s["orig_masks"].bool() for s in samples]
            batch["query_targets"] = q_targets
            batch["candidates"] = cands
            batch["candidate_labels"] = cand_labels
        return batch
