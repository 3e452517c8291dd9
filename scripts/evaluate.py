"""Evaluate SAM2 / SAM3 tracker / SAM3 on a prepared split, or compare them in one report.

    # SAM2 with prompts from the ground truth (1 point, 3 points, box) + clicks-to-IoU / NoC
    python scripts/evaluate.py sam2 --model outputs/sam2_demo/final --data DIR   # -> outputs/eval_sam2
    # SAM3 tracker (SAM3's point/box head): exactly SAM2's protocol and report
    python scripts/evaluate.py sam3_tracker --model outputs/sam3_tracker_demo/final --data DIR
    #   -> outputs/eval_sam3_tracker
    # SAM3 from text: every phrase of the split plus negatives, all SAM3 metrics
    python scripts/evaluate.py sam3 --model outputs/sam3_demo/final --data DIR   # -> outputs/eval_sam3
    # baseline vs fine-tuned and SAM2 vs SAM3 on the same images
    python scripts/evaluate.py compare --sam2 outputs/sam2_demo/final --sam3 outputs/sam3_demo/final \
        --sam2-baseline sam2-tiny --sam3-baseline sam3-tiny --data DIR --split validation  # -> outputs/compare
    # all three: SAM2 and the SAM3 tracker on the same clicks/boxes, SAM3 from text, plus the
    # equal-prompt gap (tracker minus SAM2) with a paired bootstrap interval over images
    python scripts/evaluate.py compare --sam2 outputs/sam2_demo/final \
        --sam3-tracker outputs/sam3_tracker_demo/final --sam3 outputs/sam3_demo/final --data DIR

A model SRC is a Hub id, a fine-tuned folder (a run's ``final/`` or ``best/``), a run directory
(its ``final/`` is used), a peft adapter folder (the base it names is built and the adapter
merged), or ``sam2-tiny`` / ``sam3-tracker-tiny`` / ``sam3-tiny`` (random weights seeded by
``--seed``). The input size is the one saved with the model unless ``--sam2-resolution`` /
``--sam3-tracker-resolution`` / ``--sam3-resolution`` (or ``--resolution``) say otherwise.
``--data`` is a DatasetDict folder written by ``scripts/prepare_*`` (SAM2 and the tracker need
instance masks; SAM3 noun phrases, else the category is used and the report says so). SAM2
and the tracker are given the same prompts (drawn per object in original-image pixels) even
at different input sizes; any subset of ``--sam2`` / ``--sam3-tracker`` / ``--sam3`` works.

Options left unset (``--seed``, ``--max-images``, ``--negative-ratio``, ``--hard-negatives``) are
read from the training config saved with the fine-tuned model (``final/training_config.yaml``),
else the recipes' defaults apply: on a run's ``final/`` and the run's evaluation split, SAM3 is
scored on the very (image, phrase) pairs -- built by the same function,
``sam_hf.data.views.sam3_eval_pairs`` -- and with the same metrics as the run's final evaluation.

Writes (``--out``, default ``outputs/eval_<mode>`` or ``outputs/compare``) OUT/report.md,
OUT/report.json, OUT/report.csv, PNG plots (with SAM2 and a tracker: equal_prompt_gap.png), an
overlay grid of the best and worst images, and OUT/records/<model>.json (the predictions as RLE
and the prompts behind every number).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from sam_hf.config.validate import GEOMETRIC_FAMILIES, family_name
from sam_hf.eval.data import load_split, select_images
from sam_hf.eval.report import write_report
from sam_hf.eval.run import ModelSpec, run_evaluation
from sam_hf.eval.settings import SAM2_PROMPTS, EvalSettings
from sam_hf.eval.sources import FAMILIES, EvaluationError

#: Families of the compare mode, in table order; each has --<fam>, --<fam>-baseline and
#: --<fam>-resolution options (``sam3_tracker`` spelled ``--sam3-tracker``).
COMPARE_ORDER = ("sam2", "sam3_tracker", "sam3")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="Prepared DatasetDict folder.")
    p.add_argument("--split", default="validation", help="Split to evaluate (default validation).")
    p.add_argument(
        "--out",
        default=None,
        help="Output folder for the report (default: outputs/eval_<mode>, or outputs/compare).",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="First N images only (0: all; default: the fine-tune's max_eval_samples, else all).",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="Seeds prompts, negatives and tiny models (default: the fine-tune's training seed, "
        "so the numbers match its trainer's eval; 42 without a training config).",
    )
    p.add_argument("--batch-size", type=int, default=4, help="Images per forward pass.")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers.")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda or cpu (default: cuda when available).",
    )
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")


def _sam2_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompts",
        default=",".join(SAM2_PROMPTS),
        help="SAM2 prompt protocols, comma-separated (point, points, box).",
    )
    p.add_argument("--num-points", type=int, default=3, help="Points of the 'points' protocol.")
    p.add_argument(
        "--max-clicks", type=int, default=10, help="Clicks of the NoC protocol (0: skip it)."
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        help="Image resamples of the equal-prompt gap's 95%% interval (SAM3 tracker minus "
        "SAM2; seeded by --seed).",
    )


def _sam3_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="SAM3 score at which a prediction counts (default: the fine-tune's "
        "score_threshold, else 0.5 as in SA-Co).",
    )
    p.add_argument(
        "--negative-ratio",
        type=float,
        default=None,
        help="Sampled negatives per positive phrase (default: the fine-tune's negative_ratio, "
        "else 0.2).",
    )
    p.add_argument(
        "--hard-negatives",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Attribute-swapped negatives among the drawn ones (default: the fine-tune's "
        "hard_negatives, else on).",
    )


def _flag(family: str) -> str:
    """A family as the command line spells it: ``sam3_tracker`` -> ``sam3-tracker``."""
    return family.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    for fam in FAMILIES:
        p = sub.add_parser(
            fam, help=f"Evaluate one {family_name(fam)} model (optionally vs a baseline)."
        )
        p.add_argument("--model", required=True, help="Model source (fine-tuned or any).")
        p.add_argument("--baseline", default=None, help="Optional baseline source to compare.")
        p.add_argument("--resolution", type=int, default=None, help="Input size override.")
        _common(p)
        (_sam2_opts if fam in GEOMETRIC_FAMILIES else _sam3_opts)(p)
    p = sub.add_parser(
        "compare", help="SAM2 vs SAM3 tracker vs SAM3 (and baselines) on the same images."
    )
    for fam in COMPARE_ORDER:
        flag, name = _flag(fam), family_name(fam)
        p.add_argument(f"--{flag}", default=None, help=f"Fine-tuned {name} source.")
        p.add_argument(f"--{flag}-baseline", default=None, help=f"{name} baseline source.")
        p.add_argument(
            f"--{flag}-resolution", type=int, default=None, help=f"{name} input size override."
        )
    _common(p)
    _sam2_opts(p)
    _sam3_opts(p)
    return parser


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The models a command line names, baselines first (the order of the tables); labels are
    the families as spelled on the command line (``sam3-tracker``, ``sam3-tracker-baseline``)."""
    if args.mode in FAMILIES:
        fam, label = args.mode, _flag(args.mode)
        specs = []
        if args.baseline:
            specs.append(
                ModelSpec(f"{label}-baseline", args.baseline, fam, "baseline", args.resolution)
            )
        role = "fine-tuned" if args.baseline else "model"
        specs.append(ModelSpec(label, args.model, fam, role, args.resolution))
        return specs
    specs = []
    for fam in COMPARE_ORDER:
        flag = _flag(fam)
        tuned = getattr(args, fam)
        base = getattr(args, f"{fam}_baseline")
        res = getattr(args, f"{fam}_resolution")
        if base:
            specs.append(ModelSpec(f"{flag}-baseline", base, fam, "baseline", res))
        if tuned:
            specs.append(ModelSpec(flag, tuned, fam, "fine-tuned" if base else "model", res))
        elif base:
            raise EvaluationError(f"--{flag}-baseline needs --{flag} (the model to compare with).")
    if not specs:
        raise EvaluationError("compare needs at least one of --sam2, --sam3-tracker, --sam3.")
    return specs


def settings_from(args: argparse.Namespace) -> EvalSettings:
    prompts = tuple(
        p.strip()
        for p in str(getattr(args, "prompts", ",".join(SAM2_PROMPTS))).split(",")
        if p.strip()
    )
    bad = [p for p in prompts if p not in SAM2_PROMPTS]
    if bad:
        raise EvaluationError(f"--prompts {bad} unknown; choose from {list(SAM2_PROMPTS)}.")
    num_points = int(getattr(args, "num_points", 3))
    if not 3 <= num_points <= 5:
        raise EvaluationError(
            f"--num-points must be 3-5 (SAM2's multi-point range), got {num_points}."
        )
    threshold = getattr(args, "score_threshold", None)
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise EvaluationError(f"--score-threshold must be within (0, 1), got {threshold}.")
    if (
        getattr(args, "bootstrap", 1) < 1
        or args.batch_size < 1
        or (args.max_images or 0) < 0
        or getattr(args, "max_clicks", 0) < 0
        or (getattr(args, "negative_ratio", None) or 0) < 0
    ):
        raise EvaluationError(
            "--batch-size and --bootstrap must be >= 1; --max-images, --max-clicks and "
            "--negative-ratio >= 0."
        )
    return EvalSettings(
        seed=args.seed,
        max_images=args.max_images,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        sam2_prompts=prompts,
        num_points=num_points,
        max_clicks=int(getattr(args, "max_clicks", 10)),
        score_threshold=threshold,
        negative_ratio=getattr(args, "negative_ratio", None),
        hard_negatives=getattr(args, "hard_negatives", None),
        device=str(args.device),
        bootstrap_resamples=int(getattr(args, "bootstrap", 2000)),
    )


#: Where each mode writes its report when --out is not given (outputs/ is not tracked by git).
DEFAULT_OUT = {
    "sam2": "outputs/eval_sam2",
    "sam3_tracker": "outputs/eval_sam3_tracker",
    "sam3": "outputs/eval_sam3",
    "compare": "outputs/compare",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out = args.out or DEFAULT_OUT[args.mode]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        # 1. What to evaluate, and how.
        specs = model_specs(args)
        settings = settings_from(args)
        # 2. Every model's protocol on the same images.
        ev = run_evaluation(
            specs, args.data, args.split, settings, mode=args.mode, progress=not args.no_progress
        )
    except (EvaluationError, OSError, ValueError) as e:  # noqa: B014 - messages, not tracebacks
        print(f"error: {e}", file=sys.stderr)
        return 2
    # 3. Tables, plots and overlays (of the images every model saw).
    ds = select_images(load_split(args.data, args.split)[0], ev.settings.max_images)
    written = write_report(ev, ds, args.out)
    print(f"wrote {len(written)} files to {args.out}:")
    for p in written:
        print(f"  {Path(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
