"""The prepared dataset a training run reads: generated when asked for, checked before use.

A run trains from a ``DatasetDict`` on disk (``cfg.dataset_path``) that a converter in
``scripts/`` wrote. :func:`prepare_synthetic` generates the synthetic demo data there when
``--synthetic_num_images`` asks for it and the folder is absent; :func:`load_splits` opens it
and fails with a message that says how to make it when it is missing or lacks a split. Both run
before the model is built, so a wrong path costs seconds, not a download.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets

from sam_hf.config import ConfigError
from sam_hf.data.build import save_atomically
from sam_hf.data.sources.coco import convert_coco_text
from sam_hf.data.sources.minneapple import convert_minneapple
from sam_hf.data.synthetic.orchard import make_synthetic_orchard
from sam_hf.data.synthetic.shape_rows import STYLES, make_shapes_dataset

logger = logging.getLogger("sam_hf")


def load_splits(cfg: Any) -> datasets.DatasetDict:
    """The prepared DatasetDict, with a message that says how to make one when it is missing."""
    path = Path(cfg.dataset_path)
    if not path.exists():
        prepare = (
            f"python scripts/prepare_coco_text.py --images DIR --annotations FILE.json --out {path}"
            if cfg.family == "sam3"
            else f"python scripts/prepare_mineapple.py --source DIR --out {path}"
        )
        raise ConfigError(
            f"dataset_path {path} does not exist. Check the path, or prepare it: `{prepare}` "
            "(scripts/ has a converter per format). To generate the synthetic demo data "
            f"there instead, pass --synthetic_num_images N together with --dataset_path {path}."
        )
    dd = datasets.load_from_disk(str(path))
    if not isinstance(dd, datasets.DatasetDict):
        raise ConfigError(f"{path} holds a single Dataset; expected a DatasetDict with splits.")
    for split in (cfg.train_split, cfg.eval_split):
        if split not in dd:
            raise ConfigError(
                f"{path} has splits {sorted(dd)}, but the config asks for {split!r} "
                "(train_split / eval_split)."
            )
    return dd


def _shapes(cfg: Any, size: tuple[int, ...]) -> datasets.DatasetDict:
    """Generic shapes in ``cfg.synthetic_kind``'s style, written directly: 90 % train, 10 %
    validation."""
    ds = make_shapes_dataset(
        cfg.synthetic_num_images, seed=cfg.seed, image_size=size, style=cfg.synthetic_kind
    )
    parts = ds.train_test_split(test_size=0.1, seed=cfg.seed)
    return datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]})


def _orchard(cfg: Any, size: tuple[int, ...], path: Path, view: str) -> datasets.DatasetDict:
    """The synthetic orchard in ``<path>_raw``, converted as ``view`` reads it."""
    raw = path.with_name(path.name + "_raw")
    make_synthetic_orchard(  # replaces only orchard files of an earlier, interrupted run
        raw,
        num_images=cfg.synthetic_num_images,
        seed=cfg.seed,
        image_size=size,
        zoom=cfg.synthetic_zoom,
        overwrite=True,
    )
    if view == "minneapple":
        return convert_minneapple(raw / "minneapple", val_fraction=0.2, seed=cfg.seed)
    coco = raw / "coco_text"
    return datasets.DatasetDict(
        {
            "train": convert_coco_text(coco / "images", coco / "annotations" / "train.json")[
                "train"
            ],
            "validation": convert_coco_text(
                coco / "images", coco / "annotations" / "val.json", split="validation"
            )["validation"],
        }
    )


def prepare_synthetic(cfg: Any, view: str) -> None:
    """Generate and convert synthetic data into ``cfg.dataset_path`` when it is absent.

    ``view`` picks how the orchard is read: ``minneapple`` (instance masks, for SAM2) or
    ``coco_text`` (noun phrases and negatives, for SAM3). Shapes are written directly. The
    DatasetDict is saved into a temporary folder and renamed (``save_atomically``, with the
    output marker), so an interrupted preparation never looks like a prepared dataset.
    """
    path = Path(cfg.dataset_path)
    if path.exists() or cfg.synthetic_num_images <= 0:
        return
    size = tuple(cfg.synthetic_image_size)
    logger.info(
        "%s is absent: generating %d synthetic %s images.",
        path,
        cfg.synthetic_num_images,
        cfg.synthetic_kind,
    )
    if cfg.synthetic_kind in STYLES:
        dd = _shapes(cfg, size)
    else:
        dd = _orchard(cfg, size, path, view)
    save_atomically(dd, path, command="prepare_synthetic")
