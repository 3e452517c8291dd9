"""Rebuild the small checkpoints the CPU demos fine-tune (shipped in sam_hf/assets/checkpoints).

    python scripts/build_demo_checkpoints.py --family sam2   # recipes/pretrain/sam2_mini_shapes.yaml
    python scripts/build_demo_checkpoints.py --family sam3   # recipes/pretrain/sam3_mini_shapes.yaml
    python scripts/build_demo_checkpoints.py --family sam3_tracker  # .../sam3_tracker_mini_shapes.yaml
    python scripts/build_demo_checkpoints.py --family sam2 --time_budget_minutes 8  # fit a budget

Each one trains a small random-init model on generic synthetic shapes (sam_hf.data.synthetic.shapes:
no apples) with the shared trainer, then copies its ``final/`` model and processor into the
assets folder with a PRETRAINING.md that records the recipe, the command, the hardware and the
measured validation metrics. The demos then show real fine-tuning: a model that already follows
points and boxes (SAM2) or grounds "{color} {shape}" phrases (SAM3) learns apples and their
attributes. Extra ``--key value`` flags override the pretraining YAML (e.g. ``--max_steps 500``).

``--time_budget_minutes`` makes the run fit a wall-clock budget (a lent GPU for a few minutes,
a CPU overnight): a short probe run measures the seconds per optimizer step on this machine,
then ``max_steps`` is set so that the whole run, its schedule included, ends within the budget.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from sam_hf.config import Sam2Config, Sam3Config, Sam3TrackerConfig, parse_args
from sam_hf.config.validate import family_name
from sam_hf.data.synthetic.shape_rows import STYLES
from sam_hf.tasks.sam2 import Sam2Task
from sam_hf.tasks.sam3 import Sam3Task
from sam_hf.tasks.sam3_tracker import Sam3TrackerTask
from sam_hf.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
#: Each family's config and task.
FAMILIES = {
    "sam2": (Sam2Config, Sam2Task),
    "sam3": (Sam3Config, Sam3Task),
    "sam3_tracker": (Sam3TrackerConfig, Sam3TrackerTask),
}
ASSETS = ROOT / "sam_hf" / "assets" / "checkpoints"
#: Optimizer steps of the speed probe.
PROBE_STEPS = 40
#: Share of the budget kept for what is not optimizer steps (model build, data, evaluation).
BUDGET_MARGIN = 0.8


def _config(family: str, overrides: list[str]) -> Sam2Config | Sam3Config | Sam3TrackerConfig:
    recipe = ROOT / "recipes" / "pretrain" / f"{family}_mini_shapes.yaml"
    return parse_args(FAMILIES[family][0], ["--config", str(recipe), *overrides])


def _task(family: str) -> Sam2Task | Sam3Task | Sam3TrackerTask:
    return FAMILIES[family][1]()


#: Flags the probe run replaces (it neither evaluates nor saves, so their intervals go too).
_PROBE_DROPS = ("--eval_steps", "--save_steps", "--eval_on_start", "--max_steps")


def _without(flags: list[str], keys: tuple[str, ...]) -> list[str]:
    """``flags`` (``--key value`` pairs) without ``keys`` and their values."""
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
        elif f.split("=")[0] in keys:
            skip = "=" not in f
        else:
            out.append(f)
    return out


def seconds_per_step(family: str, overrides: list[str]) -> float:
    """Seconds per optimizer step of a short probe run (same config, no eval, no checkpoints).

    ``train_runtime / global_step`` of the probe: it includes the data loader's start and the
    first steps' warm-up, so it overestimates a long run's step time (the budget is kept).
    """
    with tempfile.TemporaryDirectory() as tmp:
        probe = [
            *_without(overrides, _PROBE_DROPS),
            *("--output_dir", tmp, "--max_steps", str(PROBE_STEPS)),
            *("--eval_strategy", "no", "--save_strategy", "no", "--max_eval_samples", "1"),
        ]
        results = train(_config(family, probe), _task(family))
    return float(results["train_runtime"]) / max(1, int(results["global_step"]))


def write_asset(target: Path, cfg, results: dict, command: str, minutes: float) -> None:
    """Copy ``final/`` (model, processor, tokenizer) into ``target`` with its PRETRAINING.md.

    A run that continued an earlier checkpoint folder (``model_name_or_path``, e.g. a second
    stage with correction clicks) says so, and keeps that folder's PRETRAINING.md below its
    own: the record covers every stage, even when ``target`` replaces the folder it started
    from.
    """
    start = Path(str(cfg.model_name_or_path))
    earlier = start / "PRETRAINING.md"
    earlier_text = earlier.read_text() if earlier.is_file() else None
    continued = start.is_dir()  # before rmtree: target may be the folder it started from
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    final = Path(cfg.output_dir) / "final"
    for f in final.iterdir():
        if f.is_file() and f.name not in ("eval_results.json", "training_config.yaml", "README.md"):
            shutil.copy2(f, target / f.name)
    shutil.copy2(Path(cfg.output_dir) / "trainer_state.json", target / "trainer_state.json")
    metrics = {k.removeprefix("eval_"): v for k, v in results.items() if k.startswith("eval_")}
    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "the CPU"
    origin = (
        f"continued from the checkpoint `{start}` (its record is below)"
        if continued
        else "pretrained from random weights"
    )
    stages = (
        f"\n## Earlier stage: `{start}`\n\n" + earlier_text.split("\n", 1)[1]
        if earlier_text
        else ""
    )
    (target / "PRETRAINING.md").write_text(
        f"# {target.name}\n\n"
        f"{cfg.model_name_or_path} ({family_name(cfg.family)}) {origin} on "
        f"generic synthetic shapes (`{_generator(cfg)}`, no apples) by "
        f"`{command}` with `recipes/pretrain/{cfg.family}_mini_shapes.yaml` "
        f"({results['global_step']} optimizer steps of batch {cfg.per_device_train_batch_size}, "
        f"{minutes:.1f} minutes on {where}, seed {cfg.seed}, {cfg.resolution} px). "
        "`trainer_state.json` beside this file holds the learning curve.\n\n"
        "Validation metrics on held-out shapes images at the end of pretraining:\n\n"
        f"```json\n{json.dumps(metrics, indent=2)}\n```\n{stages}"
    )


def _generator(cfg) -> str:
    """The module that drew the pretraining data (``synthetic_kind``), for the record."""
    render, _ = STYLES[getattr(cfg, "synthetic_kind", "shapes")]
    return render.__module__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument(
        "--time_budget_minutes",
        type=float,
        default=None,
        help="Fit the whole run into this many minutes (sets max_steps from a speed probe).",
    )
    ap.add_argument(
        "--assets_dir",
        default=str(ASSETS),
        help="Where the checkpoint folder goes (default: the shipped assets).",
    )
    ap.add_argument(
        "--asset_name", default=None, help="Folder name (default: {family}-mini-shapes, _ as -)."
    )
    args, overrides = ap.parse_known_args(argv)
    t0 = time.time()
    if args.time_budget_minutes:
        sec = seconds_per_step(args.family, overrides)
        left = args.time_budget_minutes * 60 - (time.time() - t0)
        steps = max(PROBE_STEPS, int(BUDGET_MARGIN * left / sec))
        print(f"probe: {sec:.3f} s/step -> max_steps {steps} for {left / 60:.1f} min", flush=True)
        overrides = [*overrides, "--max_steps", str(steps)]
    cfg = _config(args.family, overrides)
    results = train(cfg, _task(args.family))
    minutes = (time.time() - t0) / 60
    flags = sys.argv[1:] if argv is None else argv
    command = " ".join(["python scripts/build_demo_checkpoints.py", *flags])
    default_name = f"{args.family.replace('_', '-')}-mini-shapes"
    target = Path(args.assets_dir) / (args.asset_name or default_name)
    write_asset(target, cfg, results, command, minutes)
    print(f"Wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
