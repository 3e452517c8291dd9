"""The demos' before/after numbers across training seeds: where the README's figures come from.

    python benchmarks/demo_spread.py --family sam2 --seeds 0 1 2
    python benchmarks/demo_spread.py --family sam3 --seeds 0 1 2
    python benchmarks/demo_spread.py --family sam3_tracker --seeds 0 1 2
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/demo_spread.py --family sam2 --seeds 0  # another kernel
    python benchmarks/demo_spread.py --family sam2 --seeds 0 -- --preset official  # flags to the recipe

Each seed runs the demo exactly as the README does (``accelerate launch`` of the recipe with
its demo YAML), only with ``--seed`` and its own ``--output_dir``; the data folder is the
YAML's and is generated once. The seed changes the data order, prompts and augmentation,
not the pretrained starting point, so ``before`` is the same for every seed. Prints one row
per metric: before, after per seed, mean, standard deviation, min and max of after. For the
point/box families it then scores each fine-tuned model with ``scripts/evaluate.py`` on the
demo's validation split with up to 5 correction clicks and prints mean IoU after 1-5 clicks
(the clicks-to-IoU curve: does the model follow corrections?). With ``--forgetting`` it also
runs ``scripts/demo_forgetting.py`` on each seed's run and prints the held-out shapes metrics
before and after, with their spread (what the fine-tune cost the pretrained domain).

    python benchmarks/demo_spread.py --family sam3 --seeds 0 1 2 --forgetting -- \
        --replay_dataset_path data/replay_shapes_112 --replay_fraction 0.25 --replay_synthetic_kind shapes
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMOS = {
    "sam2": (
        "recipes/sam2_mineapple.py",
        "recipes/sam2_demo.yaml",
        ["mean_iou", "mean_dice", "mean_boundary_f1"],
    ),
    "sam3_tracker": (
        "recipes/sam3_tracker_mineapple.py",
        "recipes/sam3_tracker_demo.yaml",
        ["mean_iou", "mean_dice", "mean_boundary_f1"],
    ),
    "sam3": (
        "recipes/sam3_coco_text.py",
        "recipes/sam3_demo.yaml",
        ["cgF1", "concept_recall", "IL_MCC", "grounding_accuracy", "mean_iou", "mask_AP50"],
    ),
}


#: Correction clicks of the clicks-to-IoU curve.
MAX_CLICKS = 5


def run_demo(family: str, seed: int, out_root: Path, extra: list[str]) -> tuple[dict, float]:
    recipe, config, _ = DEMOS[family]
    out = out_root / f"{family}_seed{seed}"
    cmd = [
        *("accelerate", "launch", "-q", "--num_processes", "1", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no", recipe),
        *("--config", config, "--output_dir", str(out), "--seed", str(seed), *extra),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "eval_results.json").read_text()), time.perf_counter() - t0


def clicks_curve(family: str, seed: int, out_root: Path) -> list[float]:
    """Mean IoU after 1..MAX_CLICKS clicks of the seed's ``final/`` on the demo's validation
    split (``scripts/evaluate.py``: centre clicks from the error region, previous logits as
    mask prompt)."""
    run = out_root / f"{family}_seed{seed}"
    data = yaml.safe_load((ROOT / DEMOS[family][1]).read_text())["dataset_path"]
    cmd = [
        *(sys.executable, "scripts/evaluate.py", family, "--model", str(run / "final")),
        *("--data", data, "--split", "validation", "--prompts", "point"),
        *("--max-clicks", str(MAX_CLICKS), "--out", str(run / "eval_clicks")),
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    report = json.loads((run / "eval_clicks" / "report.json").read_text())
    (model,) = report["models"].values()
    return model["clicks"]["miou_per_click"]


def forgetting(family: str, seed: int, out_root: Path) -> dict:
    """``scripts/demo_forgetting.py`` on the seed's run: its held-out shapes before/after."""
    run = out_root / f"{family}_seed{seed}"
    cmd = [sys.executable, "scripts/demo_forgetting.py", str(run)]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((run / "forgetting_results.json").read_text())


def print_spread(title: str, before: dict, after: dict[int, dict], keys: list[str]) -> None:
    """One row per metric: before, after per seed, mean, sd, min, max of after."""
    seeds = sorted(after)
    print(title)
    print(
        " | ".join(["metric", "before", *(f"seed {s}" for s in seeds), "mean", "sd", "min", "max"])
    )
    for key in keys:
        vals = [after[s][key] for s in seeds]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        cells = [key, f"{before.get(key, float('nan')):.3f}", *(f"{a:.3f}" for a in vals)]
        cells += [f"{statistics.mean(vals):.3f}", f"{sd:.3f}", f"{min(vals):.3f}"]
        print(" | ".join([*cells, f"{max(vals):.3f}"]))


def print_clicks(curves: dict[int, list[float]]) -> None:
    seeds = sorted(curves)
    print(f"\nclicks-to-IoU after fine-tuning (mean IoU after k clicks), seeds {seeds}")
    print(" | ".join(["clicks", *(f"seed {s}" for s in seeds), "mean", "sd"]))
    for k in range(MAX_CLICKS):
        vals = [curves[s][k] for s in seeds]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        cells = [str(k + 1), *(f"{v:.3f}" for v in vals), f"{statistics.mean(vals):.3f}"]
        print(" | ".join([*cells, f"{sd:.3f}"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--family", choices=sorted(DEMOS), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="outputs/demo_spread", help="Run folders go here.")
    p.add_argument(
        "--forgetting", action="store_true", help="Also score each run on held-out shapes."
    )
    p.add_argument("extra", nargs="*", help="After --: flags passed to the recipe as given.")
    args = p.parse_args()
    runs = {}
    for seed in args.seeds:
        runs[seed], secs = run_demo(args.family, seed, ROOT / args.out, args.extra)
        print(f"seed {seed}: {secs:.0f} s", flush=True)
    kernel = os.environ.get("ATEN_CPU_CAPABILITY", "default")
    flags = f", recipe flags {' '.join(args.extra)}" if args.extra else ""
    print(f"\n{args.family} demo, seeds {args.seeds}, ATEN_CPU_CAPABILITY={kernel}{flags}")
    metrics = DEMOS[args.family][2]
    before = {k: runs[args.seeds[0]].get(f"initial_eval_{k}", float("nan")) for k in metrics}
    after = {s: {k: runs[s][f"eval_{k}"] for k in metrics} for s in args.seeds}
    print_spread("orchard (the demo's validation split)", before, after, metrics)
    if args.forgetting:
        held = {s: forgetting(args.family, s, ROOT / args.out) for s in args.seeds}
        first = held[args.seeds[0]]
        title = (
            f"\nheld-out shapes (forgetting): {first['num_images']} images, "
            f"{first['num_objects']} objects, seed {first['heldout_seed']}"
        )
        keys = [k for k in metrics if k in first["before"]]
        print_spread(title, first["before"], {s: held[s]["after"] for s in args.seeds}, keys)
    if args.family != "sam3":
        print_clicks({s: clicks_curve(args.family, s, ROOT / args.out) for s in args.seeds})
    sys.stdout.flush()


if __name__ == "__main__":
    main()
