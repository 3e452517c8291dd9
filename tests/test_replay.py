"""Replay (rehearsal): a share of the pretraining data mixed into a fine-tune's training set.

What a user relies on: ``replay_fraction`` of the training images come from the replay set
(the rest are the main split, untouched), the replayed shapes are the pretraining seed's and
never the held-out forgetting set's, the choice is seeded, evaluation and SAM3's negative
vocabulary ignore replay, and every misuse is refused with a fix before anything loads.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest

from sam_hf.config import ConfigError, Sam2Config, Sam3Config, load_config
from sam_hf.data.replay import REPLAY_SEED, prepare_replay, replay_count, with_replay
from sam_hf.data.synthetic.shape_rows import make_shapes_dataset
from sam_hf.models.sam3 import build_sam3
from sam_hf.tasks.sam3 import Sam3Task

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 64)


def _cfg(path: Path | None, fraction: float, kind: str | None = "shapes", seed: int = 0):
    return SimpleNamespace(
        replay_dataset_path=str(path) if path else None,
        replay_fraction=fraction,
        replay_synthetic_kind=kind,
        synthetic_image_size=list(SIZE),
        seed=seed,
    )


def _main_split(n: int) -> datasets.Dataset:
    """A stand-in main training split in the one schema, with ids no shapes image has."""
    ds = make_shapes_dataset(n, 5, SIZE)
    return ds.map(lambda r, i: {"image_id": f"orchard_{i}"}, with_indices=True)


@pytest.mark.parametrize(("n", "fraction", "want"), [(6, 0.25, 2), (9, 0.5, 9), (36, 0.2, 9)])
def test_replay_count_makes_the_fraction(n, fraction, want):
    cfg = _cfg(Path("x"), fraction)
    assert replay_count(cfg, n) == want
    assert want / (n + want) >= fraction  # rounded up: never less replay than asked
    assert replay_count(_cfg(None, 0.0), n) == 0


def test_generated_replay_is_the_pretraining_seed_and_mixes_in(tmp_path):
    main = _main_split(6)
    cfg = _cfg(tmp_path / "replay", 0.25)
    prepare_replay(cfg, len(main))
    stored = datasets.load_from_disk(str(tmp_path / "replay"))["train"]
    pretrain = make_shapes_dataset(2, REPLAY_SEED, SIZE)
    heldout = make_shapes_dataset(2, 1, SIZE)  # scripts/demo_forgetting.py's HELDOUT_SEED
    assert len(stored) == 2
    assert stored["image"] == pretrain["image"]  # the images the checkpoint trained on
    assert all(a != b for a, b in zip(stored["image"], heldout["image"]))

    mixed = with_replay(cfg, main)
    assert len(mixed) == 8
    assert mixed.select(range(6))["image_id"] == main["image_id"]  # main split first, unchanged
    assert sorted(mixed.select(range(6, 8))["image_id"]) == sorted(stored["image_id"])
    assert mixed.features == main.features


def test_choice_is_seeded(tmp_path):
    path = tmp_path / "pool"
    datasets.DatasetDict({"train": make_shapes_dataset(12, 0, SIZE)}).save_to_disk(str(path))
    main = _main_split(9)
    picks = {s: with_replay(_cfg(path, 0.25, None, s), main)["image_id"][9:] for s in range(4)}
    assert picks[0] == with_replay(_cfg(path, 0.25, None, 0), main)["image_id"][9:]
    assert len({tuple(p) for p in picks.values()}) > 1  # the seed changes the choice


def test_misuse_is_refused_with_a_fix(tmp_path):
    main = _main_split(6)
    with pytest.raises(ConfigError, match="set replay_synthetic_kind"):
        with_replay(_cfg(tmp_path / "absent", 0.25, None), main)
    small = tmp_path / "small"
    datasets.DatasetDict({"train": make_shapes_dataset(1, 0, SIZE)}).save_to_disk(str(small))
    with pytest.raises(ConfigError, match="needs 2 replay images; .* has 1"):
        with_replay(_cfg(small, 0.25, None), main)
    clash = tmp_path / "clash"
    same = main.select(range(3))
    datasets.DatasetDict({"train": same}).save_to_disk(str(clash))
    with pytest.raises(ConfigError, match="replay image ids also name training images"):
        with_replay(_cfg(clash, 0.25, None), main)
    nosplit = tmp_path / "nosplit"
    datasets.DatasetDict({"validation": same}).save_to_disk(str(nosplit))
    with pytest.raises(ConfigError, match="no 'train' split"):
        with_replay(_cfg(nosplit, 0.25, None), main)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"replay_fraction": 0.3}, "needs replay_dataset_path"),
        ({"replay_dataset_path": "d"}, "nothing would be replayed"),
        ({"replay_dataset_path": "d", "replay_fraction": 1.0}, r"within \[0, 1\)"),
        ({"replay_synthetic_kind": "shapes"}, "replay_synthetic_kind needs replay_dataset_path"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Sam2Config, ROOT / "recipes" / "sam2_demo.yaml", overrides)


def test_sam3_trains_on_the_mix_and_evaluates_without_it(tmp_path):
    """The training view grows by the replayed images; the evaluation pairs and the negative
    vocabulary are exactly those of the run without replay."""
    base = {
        "dataset_path": str(tmp_path / "orchard"),
        "synthetic_num_images": 8,
        "synthetic_image_size": [96, 96],
        "output_dir": str(tmp_path / "out"),
    }
    yaml = ROOT / "recipes" / "sam3_demo.yaml"
    plain = load_config(Sam3Config, yaml, base)
    replay = {"replay_dataset_path": str(tmp_path / "replay"), "replay_fraction": 0.5}
    mixed = load_config(Sam3Config, yaml, {**base, **replay, "replay_synthetic_kind": "shapes"})
    runs = {}
    for name, cfg in (("plain", plain), ("mixed", mixed)):
        task = Sam3Task()
        task.prepare_data(cfg)
        runs[name] = (task, *task.build_datasets(cfg, _processor()))
    (t0, train0, eval0), (t1, train1, eval1) = runs["plain"], runs["mixed"]
    assert len(train1) == 2 * len(train0)
    assert len(eval1) == len(eval0)
    assert t1.vocab.phrases == t0.vocab.phrases
    assert not any("apple" in p for p in _phrases(train1, range(len(train0), len(train1))))
    e0, e1 = eval0[0], eval1[0]
    assert np.array_equal(np.asarray(e0["pixel_values"]), np.asarray(e1["pixel_values"]))


def _processor():
    cfg = load_config(Sam3Config, ROOT / "recipes" / "sam3_demo.yaml", {"output_dir": "unused"})
    return build_sam3(cfg)[1]


def _phrases(ds, indices) -> list[str]:
    return [p for i in indices for p in ds[i]["phrases"]]
