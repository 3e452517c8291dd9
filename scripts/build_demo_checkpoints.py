"""Rebuild the tiny checkpoints the CPU demos fine-tune (shipped in sam_hf/assets/checkpoints).

    python scripts/build_demo_checkpoints.py --family sam2   # recipes/pretrain/sam2_tiny_shapes.yaml
    python scripts/build_demo_checkpoints.py --family sam3   # recipes/pretrain/sam3_tiny_shapes.yaml

Each one trains a tiny random-init model on generic synthetic shapes (sam_hf.data.synthetic.shapes: no
apples) with the shared trainer, then copies its ``final/`` model and processor into the
assets folder with a PRETRAINING.md that records the recipe, the command and the measured
validation metrics. The demos then show real fine-tuning: a model that already follows
points (SAM2) or grounds "{color} {shape}" phrases (SAM3) learns apples and their attributes.
Extra ``--key value`` flags override the pretraining YAML (e.g. ``--max_steps 500``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from sam_hf.config import Sam2Config, Sam3Config, parse_args
from sam_hf.tasks.sam2 import Sam2Task
from sam_hf.tasks.sam3 import Sam3Task
from sam_hf.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "sam_hf" / "assets" / "checkpoints"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--family", choices=["sam2", "sam3"], required=True)
    args, overrides = ap.parse_known_args(argv)
    recipe = ROOT / "recipes" / "pretrain" / f"{args.family}_tiny_shapes.yaml"
    config_cls, task = (
        (Sam2Config, Sam2Task()) if args.family == "sam2" else (Sam3Config, Sam3Task())
    )
    cfg = parse_args(config_cls, ["--config", str(recipe), *overrides])
    t0 = time.time()
    results = train(cfg, task)
    final_metrics = {
        k.removeprefix("eval_"): v for k, v in results.items() if k.startswith("eval_")
    }
    minutes = (time.time() - t0) / 60
    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "the CPU"

    target = ASSETS / f"{args.family}-tiny-shapes"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    final = Path(cfg.output_dir) / "final"
    for f in final.iterdir():
        if f.is_file() and f.name not in ("eval_results.json", "training_config.yaml", "README.md"):
            shutil.copy2(f, target / f.name)
    command = " ".join(
        ["python scripts/build_demo_checkpoints.py", f"--family {args.family}", *overrides]
    )
    (target / "PRETRAINING.md").write_text(
        f"# {target.name}\n\n"
        f"Tiny {args.family.upper()} pretrained from random weights on generic synthetic shapes "
        f"(`sam_hf.data.synthetic.shapes`, no apples) by `{command}` with "
        f"`recipes/pretrain/{recipe.name}` ({results['global_step']} optimizer steps, "
        f"{minutes:.0f} minutes on {where}).\n\n"
        "Validation metrics on held-out shapes images at the end of pretraining:\n\n"
        f"```json\n{json.dumps(final_metrics, indent=2)}\n```\n"
    )
    print(f"Wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
