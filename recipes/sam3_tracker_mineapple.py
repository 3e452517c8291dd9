"""Fine-tune SAM3's tracker head (Sam3TrackerModel) with simulated point/box prompts.

    accelerate launch recipes/sam3_tracker_mineapple.py                # facebook/sam3, 1008 px
    accelerate launch recipes/sam3_tracker_mineapple.py --config recipes/sam3_tracker_demo.yaml
    accelerate launch recipes/sam3_tracker_mineapple.py --prompt_type box --learning_rate 3e-5

The same prompts, loss and presets as recipes/sam2_mineapple.py, on SAM3's backbone: the
official SAM3 training code trains text prompts only. Any YAML key can be overridden as
``--key value``; ``--help`` lists them all.
"""

from __future__ import annotations

from pathlib import Path

from sam_hf.config import Sam3TrackerConfig
from sam_hf.recipe import cli, run_recipe
from sam_hf.tasks.sam3_tracker import Sam3TrackerTask


def main(argv: list[str] | None = None) -> dict:
    # Parse the YAML beside this script (or --config) + CLI overrides, build, train(cfg).
    return run_recipe(
        Sam3TrackerConfig, Sam3TrackerTask(), Path(__file__).with_suffix(".yaml"), argv
    )


if __name__ == "__main__":
    cli(main)
