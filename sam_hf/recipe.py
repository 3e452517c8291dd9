"""What every recipe script does: parse the YAML beside it plus CLI overrides, then train."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from sam_hf.configs import ConfigError, parse_args
from sam_hf.trainer import Task, train


def run_recipe(
    config_cls: type, task: Task, default_config: Path, argv: list[str] | None = None
) -> dict:
    """``--config`` defaults to the recipe's own YAML; any ``--key value`` overrides it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(default_config), *argv]
    return train(parse_args(config_cls, argv), task)


def cli(main: Any) -> None:
    """Run a recipe's ``main``; a config mistake exits 2 with its message, not a traceback.

    Every rank finds the same mistake, so only the first prints it. ``accelerate launch``
    itself adds a launcher traceback (and repeats the child's stderr) for any child that
    exits non-zero, unless started with ``--quiet``/``-q``; the documented commands use it.
    """
    try:
        main()
    except ConfigError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"Config error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
