"""Loss and validation-metric curves of a training run, as PNG.

    python scripts/plot_run.py outputs/sam2_demo            # writes into the run folder
    python scripts/plot_run.py outputs/sam2_demo --out plots

Reads the run's ``trainer_state.json`` (its ``log_history`` in the HF Trainer's schema:
training entries with ``loss``, ``learning_rate``, ``grad_norm`` and per-term losses,
evaluation entries with ``eval_<metric>`` keys; an evaluation at step 0 is the one before
training) and marks the best step (``best_global_step``; the metric from ``eval_results.json``).
Writes ``loss_curves.png`` (total and per-term loss, learning rate, grad norm) and
``eval_curves.png`` (one panel per validation metric).
"""

from __future__ import annotations

import argparse
import sys

from sam_hf.eval.run_curves import plot_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="A sam_hf output_dir (holds trainer_state.json).")
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
