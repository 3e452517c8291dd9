"""What every recipe script does: parse the YAML beside it plus CLI overrides, then train."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from sam_hf.config import ConfigError, parse_args
from sam_hf.training.errors import RunError
from sam_hf.training.loop import train
from sam_hf.training.signals import TrainingInterrupted
from sam_hf.training.task import Task


def run_recipe(
    config_cls: type, task: Task, default_config: Path, argv: list[str] | None = None
) -> dict:
    """``--config`` defaults to the recipe's own YAML; any ``--key value`` overrides it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(default_config), *argv]
    return train(parse_args(config_cls, argv), task)


def cli(main: Any) -> None:
    """Run a recipe's ``main``; the errors a user acts on exit with one line, not a traceback.

    - a config mistake (also: output_dir in use by another run, a resume whose checkpoint has
      other settings): ``Config error: ...``, exit 2;
    - a run error (a damaged checkpoint, a full disk, a final Hub push that failed): ``Error:
      ...`` naming the file and what to do, exit 1;
    - SIGTERM: the trainer saved a checkpoint; one line, exit 143 (128 + SIGTERM), the status
      of a process SIGTERM ended, so schedulers see an interrupted run, not a finished one.

    Every rank finds the same mistake, so only the first prints it. ``accelerate launch``
    itself adds a launcher traceback (and repeats the child's stderr) for any child that
    exits non-zero, unless started with ``--quiet``/``-q``; the documented commands use it.
    """
    first = os.environ.get("RANK", "0") == "0"
    try:
        main()
    except ConfigError as e:
        if first:
            print(f"Config error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except RunError as e:
        if first:
            print(f"Error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except TrainingInterrupted as e:
        if first:
            print(str(e), file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
