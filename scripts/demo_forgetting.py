#!/usr/bin/env python
"""After a demo fine-tune: what did the model forget of the generic shapes it was pretrained on?

    python scripts/demo_forgetting.py outputs/sam2_demo   # make demo runs it after the fine-tune
    python scripts/demo_forgetting.py outputs/sam3_demo   # make demo-sam3
    python scripts/demo_forgetting.py outputs/sam3_tracker_demo   # make demo-sam3-tracker

A gain on the orchard is only half of the story: a fine-tune can win it by unlearning what the
pretrained checkpoint could already do. So the run's starting checkpoint ("before": the
``model_name_or_path`` saved in ``final/training_config.yaml``) and its ``final/`` ("after")
are scored on held-out generic shapes (:mod:`sam_hf.data.synthetic.shapes`) at the run's
resolution, with the run's own evaluation protocol and seed (SAM2: one centre click per object;
SAM3: every phrase plus negatives) by :func:`sam_hf.eval.run.run_evaluation` -- the code behind
``scripts/evaluate.py`` -- and printed as a before/after table like the orchard's.

Held out: the images are drawn with seed ``HELDOUT_SEED`` = 1. The pretraining recipes
(``recipes/pretrain/*.yaml``) draw seed 0, and image ``i`` of seed ``s`` depends only on
``(s, i, size)``, so none of these images was trained on. They are generated on first use
(offline, a few seconds) into ``data/heldout_shapes_<generator>_<size>px_seed<seed>_n<N>``
and reused afterwards. The numbers are also written to ``RUN/forgetting_results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import datasets
import torch

from sam_hf.data.synthetic.shape_rows import write_shapes
from sam_hf.data.synthetic.shapes import GENERATOR_VERSION
from sam_hf.eval.compare import jsonable
from sam_hf.eval.run import ModelSpec, run_evaluation
from sam_hf.eval.settings import EvalSettings
from sam_hf.eval.sources import EvaluationError, resolve_source
from sam_hf.training.reporting import before_after_table

#: Seed of the held-out shapes: not 0, the seed the pretraining recipes draw their images with.
HELDOUT_SEED = 1
#: About 200-250 objects (6-8 per image): a stable mean, and seconds per model on 2 CPU cores.
NUM_IMAGES = 32
#: The protocol whose metrics the table shows, per family: the demo's own evaluation.
PROTOCOL = {"sam2": "point", "sam3_tracker": "point", "sam3": "text"}


def heldout_shapes(data_dir: Path, resolution: int, num_images: int, seed: int) -> Path:
    """The held-out shapes folder (one ``validation`` split), generated when absent.

    The name carries everything the images depend on, so a changed generator, size, seed or
    count never reuses stale images.
    """
    name = f"heldout_shapes_{GENERATOR_VERSION}_{resolution}px_seed{seed}_n{num_images}"
    path = data_dir / name
    if not path.exists():
        logging.getLogger("sam_hf").info("%s is absent: generating it.", path)
        size = (resolution, resolution)
        write_shapes(path, "validation", num_images, seed, size, command="demo_forgetting")
    return path


def run_models(run: Path, baseline: str | None) -> tuple[str, str, str, int]:
    """``(family, before, after, resolution)`` of a run: its start checkpoint and ``final/``."""
    src = resolve_source(str(run))
    before = baseline or src.run_config.get("model_name_or_path")
    if not before:
        raise EvaluationError(
            f"{run}: no training_config.yaml names the checkpoint the run started from; pass "
            "--baseline."
        )
    resolution = int(src.run_config.get("resolution") or src.resolution)
    return src.family, str(before), src.source, resolution


def forgetting(
    run: Path,
    data_dir: Path,
    num_images: int = NUM_IMAGES,
    seed: int = HELDOUT_SEED,
    baseline: str | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Before and after metrics of a run on held-out shapes, with what they were measured on."""
    family, before, after, resolution = run_models(run, baseline)
    data = heldout_shapes(data_dir, resolution, num_images, seed)
    specs = [
        ModelSpec("before", before, family, "baseline", resolution),
        ModelSpec("after", after, family, "fine-tuned", resolution),
    ]
    # seed, negatives and score threshold: the run's own (resolve_settings reads them); SAM3's
    # negative vocabulary: the held-out images' own phrases (there is no shapes training split)
    settings = EvalSettings(
        max_images=0,
        sam2_prompts=("point",),
        max_clicks=0,
        train_split="validation",
        device=device,
    )
    ev = run_evaluation(specs, data, "validation", settings, mode=family, progress=progress)
    metrics = {m.label: m.metrics[PROTOCOL[family]] for m in ev.models}
    return {
        "family": family,
        "protocol": PROTOCOL[family],
        "before_model": before,
        "after_model": after,
        "resolution": resolution,
        "data": str(data),
        "num_images": ev.data["num_images"],
        "num_objects": ev.data["num_objects"],
        "heldout_seed": seed,
        "prompt_seed": ev.settings.seed,
        "before": metrics["before"],
        "after": metrics["after"],
    }


def forgetting_table(result: dict[str, Any]) -> str:
    """The printed table: a title line saying what was measured, then metric/before/after/change."""
    what = "phrases + negatives" if result["family"] == "sam3" else "1 centre click per object"
    title = (
        f"held-out shapes (forgetting): {result['num_images']} images, "
        f"{result['num_objects']} objects, {result['resolution']} px, "
        f"shapes seed {result['heldout_seed']} ({what})"
    )
    return title + "\n" + before_after_table(result["before"], result["after"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="The demo's output_dir (its final/ is the fine-tuned model).")
    p.add_argument("--baseline", default=None, help="Before model (default: the run's start).")
    p.add_argument("--data-dir", default="data", help="Where the shapes are generated.")
    p.add_argument("--num-images", type=int, default=NUM_IMAGES, help="Held-out images.")
    p.add_argument("--seed", type=int, default=HELDOUT_SEED, help="Seed the shapes are drawn with.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    datasets.disable_progress_bars()  # the table should follow the orchard's, not bars
    try:
        result = forgetting(
            Path(args.run),
            Path(args.data_dir),
            args.num_images,
            args.seed,
            args.baseline,
            args.device,
        )
    except (EvaluationError, OSError, ValueError) as e:  # noqa: B014 - messages, not tracebacks
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(forgetting_table(result))
    (Path(args.run) / "forgetting_results.json").write_text(
        json.dumps(jsonable(result), indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
