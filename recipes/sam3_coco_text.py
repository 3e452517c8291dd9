"""Fine-tune SAM3 on text concepts (COCO json with a noun_phrase per annotation).

    accelerate launch recipes/sam3_coco_text.py                        # the guide's settings
    accelerate launch recipes/sam3_coco_text.py --config recipes/sam3_demo.yaml --output_dir out
    accelerate launch recipes/sam3_coco_text.py --config my.yaml --learning_rate 3e-5

Any key of the YAML can be overridden as ``--key value``; ``--help`` lists them all.
"""

from __future__ import annotations

from pathlib import Path

from sam_hf.config import Sam3Config
from sam_hf.recipe import cli, run_recipe
from sam_hf.tasks.sam3 import Sam3Task


def main(argv: list[str] | None = None) -> dict:
    # Parse the YAML beside this script (or --config) + CLI overrides, build, train(cfg):
    # queries, matcher, losses and loop all come from sam_hf.
    return run_recipe(Sam3Config, Sam3Task(), Path(__file__).with_suffix(".yaml"), argv)


if __name__ == "__main__":
    cli(main)
