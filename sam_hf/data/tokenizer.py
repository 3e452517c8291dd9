"""An offline CLIP BPE tokenizer for SAM3, and phrase tokenisation that reports truncation.

SAM3's text encoder is a CLIP text transformer and its processor needs the CLIP BPE
tokenizer (49,408 tokens). The Hub copy of ``facebook/sam3`` ships it, but tiny random models,
tests and offline machines have no Hub. The ``open_clip_torch`` package ships the original BPE
merges file (``bpe_simple_vocab_16e6.txt.gz``); from it we write the two files a transformers
``CLIPTokenizer`` is made of (``vocab.json`` + ``merges.txt``), once, into a cache folder. The
vocabulary is laid out exactly as open_clip (and OpenAI's CLIP) lays it out -- 256 byte symbols,
the same 256 with the end-of-word marker ``</w>``, one token per merge, then start/end of text
-- so ids equal open_clip's ``SimpleTokenizer`` ids (the tests check this).

Padding: the sequence is padded with ``<|endoftext|>`` (transformers' CLIP convention) while
open_clip pads with id 0; padded positions are masked by ``attention_mask`` everywhere SAM3
reads text features, so the pad id does not change any output.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)

#: SAM3's text context (``text_config.max_position_embeddings``; Sam3Processor pads to 32).
SAM3_CONTEXT_LENGTH = 32
#: CLIP's vocabulary size: 256 bytes x 2 + 48,894 merges + 2 special tokens.
CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_CACHE_SUBDIR = "clip_bpe_16e6"


def open_clip_bpe_path() -> Path:
    """Path of the BPE merges file shipped inside the installed ``open_clip_torch`` package."""
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():  # pragma: no cover - depends on the installed package
        raise FileNotFoundError(f"{path} is missing from the installed open_clip_torch package.")
    return path


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table, in CLIP's id order.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, ...) map
    to code points 256, 257, ... in byte order. The order of this list is the order of the
    first 256 ids.
    """
    kept = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = list(kept)
    extra = 0
    for b in range(256):
        if b not in kept:
            kept.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + _NUM_MERGES]  # line 0 is a version header
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [_BOS, _EOS]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe_path} gave {len(tokens)} tokens, expected {CLIP_VOCAB_SIZE}.")
    return {t: i for i, t in enumerate(tokens)}, merges


def default_cache_dir() -> Path:
    """``$SAM_HF_CACHE`` or ``$XDG_CACHE_HOME/sam_hf`` (default ``~/.cache/sam_hf``)."""
    root = os.environ.get("SAM_HF_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "sam_hf"


def write_clip_vocab_files(out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` once (atomically) and return their folder.

    Written into a temporary sibling first and renamed, so concurrent dataloader workers or
    ranks never read half-written files.
    """
    target = Path(out_dir) if out_dir is not None else default_cache_dir() / _CACHE_SUBDIR
    if (target / "vocab.json").is_file() and (target / "merges.txt").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges(open_clip_bpe_path())
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    try:
        tmp.rename(target)
    except OSError:
        # Another process won the race (its files are identical), or an empty folder of that
        # name exists: move our files in where they are missing.
        target.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            if (target / f.name).is_file():
                f.unlink()
            else:
                os.replace(f, target / f.name)
        tmp.rmdir()
    return target


def build_clip_tokenizer(
    cache_dir: str | os.PathLike | None = None, context_length: int = SAM3_CONTEXT_LENGTH
) -> CLIPTokenizer:
    """A transformers ``CLIPTokenizer`` built offline from open_clip's BPE file.

    ``model_max_length`` is SAM3's text context (32), so ``truncation=True`` keeps the start
    token, the first 30 BPE tokens and the end token -- what open_clip does too.
    """
    folder = write_clip_vocab_files(cache_dir)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=int(context_length))


def context_length_of(tokenizer: object, default: int = SAM3_CONTEXT_LENGTH) -> int:
    """The tokenizer's context if it names a real one, else SAM3's 32.

    transformers uses a huge sentinel ``model_max_length`` when a tokenizer has no limit.
    """
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < 100_000 else default


class PhraseTokenizer:
    """Tokenise noun phrases to SAM3's fixed context, counting and warning on truncation.

    A phrase longer than the text context (about 30 BPE tokens) cannot be seen whole by the
    text encoder; it is truncated (end token kept), counted in ``num_truncated`` and warned
    about once per distinct phrase per process (a DataLoader worker is its own process).
    Picklable, so it can live inside a collator sent to workers.
    """

    def __init__(self, tokenizer: object, context_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.context_length = int(context_length or context_length_of(tokenizer))
        self.num_truncated = 0
        self._warned: set[str] = set()

    def __call__(self, phrases: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}`` of shape (len(phrases), context_length), and
        ``"truncated"``: a bool tensor marking the phrases that did not fit."""
        phrases = list(phrases)
        n = self.context_length
        if not phrases:
            empty = torch.zeros((0, n), dtype=torch.long)
            return {
                "input_ids": empty,
                "attention_mask": empty.clone(),
                "truncated": torch.zeros(0, dtype=torch.bool),
            }
        # One token past the context is enough to know a phrase does not fit (and keeps
        # transformers from warning about over-long sequences itself).
        probe = self.tokenizer(phrases, truncation=True, max_length=n + 1)["input_ids"]
        truncated = torch.tensor([len(ids) > n for ids in probe], dtype=torch.bool)
        for phrase, t in zip(phrases, truncated.tolist()):
            if t:
                self.num_truncated += 1
                if phrase not in self._warned:
                    self._warned.add(phrase)
                    logger.warning(
                        "Phrase longer than SAM3's text context of %d tokens is truncated "
                        "(the text encoder sees only its start): %r",
                        n,
                        phrase,
                    )
        enc = self.tokenizer(
            phrases, padding="max_length", truncation=True, max_length=n, return_tensors="pt"
        )
        return {
            "input_ids": enc["input_ids"].long(),
            "attention_mask": enc["attention_mask"].long(),
            "truncated": truncated,
        }
