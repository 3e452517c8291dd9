"""The demos' before/after numbers across training seeds: where the README's figures come from.

    python benchmarks/demo_spread.py --family sam2 --seeds 0 1 2
    python benchmarks/demo_spread.py --family sam3 --seeds 0 1 2
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/demo_spread.py --family sam2 --seeds 0  # another kernel

Each seed runs the demo exactly as the README does (``accelerate launch`` of the recipe with
its demo YAML), only with ``--seed`` and its own ``--output_dir``; the data folder is the
YAML's and is generated once. The seed changes the data order, prompts and augmentation,
not the pretrained starting point, so ``before`` is the same for every seed. Prints one row
per metric: before, after per seed, mean, standard deviation, min and max of after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMOS = {
    "sam2": (
        "recipes/sam2_mineapple.py",
        "recipes/sam2_demo.yaml",
        ["mean_iou", "mean_dice", "mean_boundary_f1"],
    ),
    "sam3": (
        "recipes/sam3_coco_text.py",
        "recipes/sam3_demo.yaml",
        ["cgF1", "concept_recall", "IL_MCC", "grounding_accuracy", "mean_iou", "mask_AP50"],
    ),
}


def run_demo(family: str, seed: int, out_root: Path) -> tuple[dict, float]:
    recipe, yaml, _ = DEMOS[family]
    out = out_root / f"{family}_seed{seed}"
    cmd = [
        *("accelerate", "launch", "-q", "--num_processes", "1", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no", recipe),
        *("--config", yaml, "--output_dir", str(out), "--seed", str(seed)),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "eval_results.json").read_text()), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--family", choices=sorted(DEMOS), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="outputs/demo_spread", help="Run folders go here.")
    args = p.parse_args()
    runs = {}
    for seed in args.seeds:
        runs[seed], secs = run_demo(args.family, seed, ROOT / args.out)
        print(f"seed {seed}: {secs:.0f} s", flush=True)
    kernel = os.environ.get("ATEN_CPU_CAPABILITY", "default")
    print(f"\n{args.family} demo, seeds {args.seeds}, ATEN_CPU_CAPABILITY={kernel}")
    head = ["metric", "before", *(f"seed {s}" for s in args.seeds), "mean", "sd", "min", "max"]
    print(" | ".join(head))
    for key in DEMOS[args.family][2]:
        after = [runs[s][f"eval_{key}"] for s in args.seeds]
        sd = statistics.stdev(after) if len(after) > 1 else 0.0
        before = runs[args.seeds[0]].get(f"initial_eval_{key}", float("nan"))
        cells = [key, f"{before:.3f}", *(f"{a:.3f}" for a in after)]
        cells += [f"{statistics.mean(after):.3f}", f"{sd:.3f}", f"{min(after):.3f}"]
        print(" | ".join([*cells, f"{max(after):.3f}"]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
