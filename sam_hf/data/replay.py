"""Rehearsal: mix some of the data a checkpoint was pretrained on into a fine-tune.

A fine-tune on one domain can win it by unlearning what the checkpoint already did (the demos
measure this with ``scripts/demo_forgetting.py``). The usual remedy is to keep training on a
share of the old data. ``replay_dataset_path`` names a prepared DatasetDict (any converter's,
or generic synthetic shapes generated on first use with ``replay_synthetic_kind``) whose
``train`` split supplies that share: ``replay_fraction`` of the training images, drawn once
(seeded) and appended to the training split, so the epoch, the sampler and the step count
see one dataset. Evaluation and SAM3's negative-phrase vocabulary stay the main split's, so
metrics mean the same with and without replay.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import datasets

from sam_hf.config import ConfigError
from sam_hf.data.synthetic.shape_rows import write_shapes

logger = logging.getLogger("sam_hf")

#: Seed of generated replay shapes: 0, the seed the pretraining recipes draw their images with
#: (so replay shows the checkpoint images it trained on), never the held-out seed 1 that
#: ``scripts/demo_forgetting.py`` measures forgetting on.
REPLAY_SEED = 0
#: Split of ``replay_dataset_path`` that replay draws from.
REPLAY_SPLIT = "train"


def replay_count(cfg: Any, num_train: int) -> int:
    """Replay images that make ``cfg.replay_fraction`` of a training set of ``num_train``."""
    f = float(cfg.replay_fraction)
    if not cfg.replay_dataset_path or f <= 0:
        return 0
    return max(1, math.ceil(num_train * f / (1.0 - f)))


def prepare_replay(cfg: Any, num_train: int) -> None:
    """Generate ``cfg.replay_dataset_path`` when it is absent and a generator is named.

    ``num_train`` is the main training split's size: the replay set holds exactly the
    :func:`replay_count` images the mix needs, at ``synthetic_image_size``.
    """
    if not cfg.replay_dataset_path or not cfg.replay_synthetic_kind:
        return
    path = Path(cfg.replay_dataset_path)
    if path.exists():
        return
    n = replay_count(cfg, num_train)
    size = tuple(cfg.synthetic_image_size)
    logger.info(
        "%s is absent: generating %d %s images for replay (seed %d).",
        path,
        n,
        cfg.replay_synthetic_kind,
        REPLAY_SEED,
    )
    write_shapes(
        path, REPLAY_SPLIT, n, REPLAY_SEED, size, style=cfg.replay_synthetic_kind, command="replay"
    )


def with_replay(cfg: Any, train: datasets.Dataset) -> datasets.Dataset:
    """``train`` followed by ``replay_fraction`` worth of replay images (unchanged without).

    The replay images are a seeded (``cfg.seed``) random choice from the replay split, made
    once, so every epoch repeats the same mix; image ids that collide with the main split are
    an error (a sample is found by its id in records and caches).
    """
    n = replay_count(cfg, len(train))
    if n == 0:
        return train
    path = Path(cfg.replay_dataset_path)
    if not path.exists():
        raise ConfigError(
            f"replay_dataset_path {path} does not exist. Prepare it with a scripts/prepare_* "
            "converter, or set replay_synthetic_kind (shapes or clutter) to generate it."
        )
    dd = datasets.load_from_disk(str(path))
    pool = dd[REPLAY_SPLIT] if isinstance(dd, datasets.DatasetDict) and REPLAY_SPLIT in dd else None
    if pool is None:
        raise ConfigError(f"replay_dataset_path {path} has no {REPLAY_SPLIT!r} split to replay.")
    if len(pool) < n:
        raise ConfigError(
            f"replay_fraction {cfg.replay_fraction} of {len(train)} training images needs {n} "
            f"replay images; {path} has {len(pool)}. Lower replay_fraction, or delete {path} "
            "to have it generated again at this size."
        )
    chosen = pool.shuffle(seed=cfg.seed).select(range(n))
    clash = set(chosen["image_id"]) & set(train["image_id"])
    if clash:
        raise ConfigError(
            f"{len(clash)} replay image ids also name training images (e.g. "
            f"{sorted(clash)[0]!r}); give the replay set its own ids."
        )
    logger.info("Replay: %d of %d training images come from %s.", n, len(train) + n, path)
    if chosen.features != train.features:  # another converter's folder: same schema, typed
        chosen = chosen.cast(train.features)
    return datasets.concatenate_datasets([train, chosen])
