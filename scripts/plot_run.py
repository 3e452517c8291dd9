"""Loss and validation-metric curves of a training run, as PNG.

    python scripts/plot_run.py outputs/sam2_demo            # writes into the run folder
    python scripts/plot_run.py outputs/sam2_demo --out plots

Reads the run's ``training.log`` (the trainer's ``step N train/loss=...`` and ``Eval at step N:
...`` lines; ``Initial eval`` is drawn at step 0) and ``eval_results.json`` (the best step is
marked). Writes ``loss_curves.png`` (total and per-term loss, learning rate) and
``eval_curves.png`` (one panel per validation metric).
"""

from __future__ import annotations

import argparse
import sys

from sam_hf.eval.report import plot_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="A sam_hf output_dir (holds training.log).")
    p.add_argument("--out", default=None, help="Folder for the PNGs (default: the run folder).")
    args = p.parse_args(argv)
    try:
        written = plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
