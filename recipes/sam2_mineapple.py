"""Fine-tune SAM2 on MinneApple-style instance masks with simulated point/box prompts.

    accelerate launch recipes/sam2_mineapple.py                        # the guide's settings
    accelerate launch recipes/sam2_mineapple.py --config recipes/sam2_demo.yaml --output_dir out
    accelerate launch recipes/sam2_mineapple.py --learning_rate 3e-5 --prompt_type box

Any key of the YAML can be overridden as ``--key value``; ``--help`` lists them all.
"""

from __future__ import annotations

from pathlib import Path

from sam_hf.config import Sam2Config
from sam_hf.recipe import cli, run_recipe
from sam_hf.tasks.sam2 import Sam2Task


def main(argv: list[str] | None = None) -> dict:
    # Parse the YAML beside this script (or --config) + CLI overrides, build, train(cfg):
    # data, model, loss and loop all come from sam_hf.
    return run_recipe(Sam2Config, Sam2Task(), Path(__file__).with_suffix(".yaml"), argv)


if __name__ == "__main__":
    cli(main)
