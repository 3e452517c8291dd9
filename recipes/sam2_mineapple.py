"""Fine-tune SAM2 on MinneApple-style instance masks with simulated point/box prompts.

    accelerate launch recipes/sam2_mineapple.py                        # the guide's settings
    accelerate launch recipes/sam2_mineapple.py --config recipes/sam2_demo.yaml --output_dir out
    accelerate launch recipes/sam2_mineapple.py --learning_rate 3e-5 --prompt_type box

Any key of the YAML can be overridden as ``--key value``; ``--help`` lists them all.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sam_hf.configs import ConfigError, Sam2Config, parse_args
from sam_hf.tasks import Sam2Task
from sam_hf.trainer import train

DEFAULT_CONFIG = Path(__file__).with_suffix(".yaml")


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    # 1. Parse: the YAML beside this script unless --config names another; CLI overrides it.
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    cfg = parse_args(Sam2Config, argv)
    # 2. Build + train: data, model, loss and loop all come from sam_hf.
    return train(cfg, Sam2Task())


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"Config error: {e}", file=sys.stderr)
        sys.exit(2)
