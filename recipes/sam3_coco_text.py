"""Fine-tune SAM3 on text concepts (COCO json with a noun_phrase per annotation).

    accelerate launch recipes/sam3_coco_text.py                        # the guide's settings
    accelerate launch recipes/sam3_coco_text.py --config recipes/sam3_demo.yaml --output_dir out
    accelerate launch recipes/sam3_coco_text.py --config my.yaml --learning_rate 3e-5

Any key of the YAML can be overridden as ``--key value``; ``--help`` lists them all.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sam_hf.configs import ConfigError, Sam3Config, parse_args
from sam_hf.tasks import Sam3Task
from sam_hf.trainer import train

DEFAULT_CONFIG = Path(__file__).with_suffix(".yaml")


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    # 1. Parse: the YAML beside this script unless --config names another; CLI overrides it.
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    cfg = parse_args(Sam3Config, argv)
    # 2. Build + train: queries, matcher, losses and loop all come from sam_hf.
    return train(cfg, Sam3Task())


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"Config error: {e}", file=sys.stderr)
        sys.exit(2)
