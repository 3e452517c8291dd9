"""How much the shared trainer adds to a training step: trainer step time / bare loop step time.

The tiny SAM2 training module (``build_sam2`` with ``sam2-tiny`` + ``Sam2ForTraining``, at
the recipe's demo settings) trains on batches pre-collated once by ``Sam2Collator`` and held
in memory, so data loading is excluded from both arms:

- *trainer*: ``sam_hf.training.step.training_step`` with a real ``Accelerator`` from
  ``build_accelerator``, the module, optimizer and scheduler passed through
  ``accelerator.prepare`` (accumulate context, autocast, the cross-rank finite-loss check,
  loss bookkeeping, clipping, scheduler step) -- exactly what ``train()`` calls per batch;
- *bare*: ``out = module(batch); out["loss"].backward(); clip_grad_norm_; optimizer.step();
  optimizer.zero_grad()`` (and ``.item()`` of the loss, as any loop that logs it).

First the script shows the arms do the same work: from identical initial weights (deepcopy)
the trainer and a bare loop on a second copy, both with ``build_optimizer``'s AdamW and a
constant learning rate, must give equal losses at every step and equal weights after
``--check-steps`` steps. Then both arms are timed on ONE module and one AdamW state (the
trainer through its prepared wrappers, the bare loop on the objects they wrap), so the
memory placement of two copies cannot pass for loop overhead. Steps run in interleaved
blocks (``--block`` steps of one arm, then of the other, order alternating per round); the
ratio is the median over steps of (trainer step time / bare step time on the same batch in
the same round), under process CPU time by default (``--clock wall`` for wall time; both
are printed). The trainer's extra per-step operations are also timed alone and shown as a
share of a step; ``--profile`` (automatic when the ratio is above the goal) prints a
cProfile of trainer steps.

    python benchmarks/loop_overhead.py [--rounds 40] [--block 1] [--threads 1] [--profile]

Goal: <= 1.03.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import shutil
import time
from typing import Any

import _common as C
import torch

GOAL = 1.03


def _overhead_parts(
    accelerator: Any, module: Any, loss: torch.Tensor, iters: int, step_s: float
) -> list[str]:
    """Per-step cost of the trainer's extra operations, timed in isolation (and as a share
    of ``step_s``, the bare loop's median step)."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    terms = {f"t{i}": loss.detach() for i in range(4)}

    def reduce_flag() -> None:
        bool(accelerator.reduce(finite, reduction="sum").item() == accelerator.num_processes)

    def float_terms() -> None:
        for v in terms.values():
            float(v)
        float(loss.detach())

    def accumulate_ctx() -> None:
        with accelerator.accumulate(module), accelerator.autocast():
            pass

    out = []
    for name, fn in (
        ("accelerator.reduce(finite flag) + .item()", reduce_flag),
        ("float() of the loss and 4 terms", float_terms),
        ("accelerator.accumulate + autocast contexts", accumulate_ctx),
    ):
        fn()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        per = (time.perf_counter() - t0) / iters
        out.append(f"  {name}: {per * 1e6:.1f} us per step ({100 * per / step_s:.4f}% of a step)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds (after 1 warm-up)")
    parser.add_argument("--block", type=int, default=1, help="steps of one arm per block")
    parser.add_argument("--num-images", type=int, default=16, help="synthetic orchard images")
    parser.add_argument(
        "--check-steps", type=int, default=3, help="steps of the same-work check (untimed)"
    )
    parser.add_argument("--profile", action="store_true", help="always print the profile")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="clock of the RATIO line (both are printed); cpu: process CPU time, robust to "
        "other jobs on a shared machine when --threads is 1",
    )
    C.add_common_args(parser)
    args = parser.parse_args()
    C.set_threads(args.threads)
    C.quiet_libraries()

    from sam_hf.data.collate import Sam2Collator
    from sam_hf.training.optim import build_optimizer, build_scheduler
    from sam_hf.training.startup import build_accelerator
    from sam_hf.training.step import StepWindow, training_step

    tmp = C.temp_dir("loop")
    try:
        # A constant learning rate (no warmup) so both arms apply identical updates.
        cfg = C.recipe_config(tmp / "out", lr_scheduler_type="constant", warmup_steps=0)
        module, processor = C.tiny_sam2(cfg)
        dd = C.orchard_dataset(
            tmp, args.num_images, (cfg.resolution, cfg.resolution), cfg.seed, cfg.synthetic_zoom
        )
        ds = C.segmentation_dataset(dd["train"], cfg, processor)
        batches = [
            b
            for b in C.precollate(
                ds, Sam2Collator(cfg, train=True), cfg.per_device_train_batch_size
            )
            if b["num_objects"]
        ]

        accelerator = build_accelerator(cfg)
        trainer_module = copy.deepcopy(module).train()
        opt_t = build_optimizer(cfg, trainer_module)
        total = args.check_steps + (args.rounds + 1) * args.block
        sched = build_scheduler(cfg, opt_t, total_steps=total)
        trainer_module, opt_t, sched = accelerator.prepare(trainer_module, opt_t, sched)
        window = StepWindow()

        def trainer_step(batch: dict) -> float:
            stats = training_step(accelerator, trainer_module, opt_t, sched, batch, cfg, window)
            return stats["loss"]

        print(
            C.describe_config(
                cfg, ["model_name_or_path", "resolution", "per_device_train_batch_size"]
            )
        )
        print(
            f"model: Sam2ForTraining on the tiny SAM2 config, {C.count_parameters(module):,} "
            f"parameters; {len(batches)} pre-collated batches of up to {cfg.per_device_train_batch_size} images "
            f"({sum(b['num_objects'] for b in batches)} prompted objects, "
            f"max_objects_per_image={cfg.max_objects_per_image}, prompt_type={cfg.prompt_type})"
        )
        C.print_machine()

        # 1. Same work: from identical weights, the trainer and a bare loop on a second copy
        #    must give the same loss at every step and the same weights after them.
        check = copy.deepcopy(module).train()
        opt_check = build_optimizer(cfg, check)
        loss_diff = 0.0
        for i in range(args.check_steps):
            batch = batches[i % len(batches)]
            loss_t = trainer_step(batch)
            loss_b = bare_step(check, opt_check, batch, cfg.max_grad_norm)
            loss_diff = max(loss_diff, abs(loss_t - loss_b))
        w_t = accelerator.unwrap_model(trainer_module).state_dict()
        w_b = check.state_dict()
        w_diff = max((w_t[k].float() - w_b[k].float()).abs().max().item() for k in w_b)
        print(
            f"same work: {args.check_steps} steps of each from identical weights: max "
            f"|loss_trainer - loss_bare| = {loss_diff:.3g}, max |w_trainer - w_bare| = {w_diff:.3g}"
        )
        if loss_diff > 1e-5 or w_diff > 1e-5:
            raise AssertionError("the trainer and the bare loop did not do the same work")
        del check, opt_check

        # 2. Timing, both arms on the SAME module and AdamW state (the trainer through its
        #    prepared wrappers, the bare loop on what they wrap), so no difference between
        #    two copies' memory can pass for loop overhead.
        bare = accelerator.unwrap_model(trainer_module)
        opt_bare = opt_t.optimizer
        steps = {"trainer": C.Timings(), "bare": C.Timings()}
        cursor = {"trainer": 0, "bare": 0}

        def next_batch(arm: str) -> dict:
            b = batches[cursor[arm] % len(batches)]
            cursor[arm] += 1
            return b

        def trainer_block() -> None:
            for _ in range(args.block):
                batch = next_batch("trainer")
                with steps["trainer"].measure():
                    trainer_step(batch)

        def bare_block() -> None:
            for _ in range(args.block):
                batch = next_batch("bare")
                with steps["bare"].measure():
                    bare_step(bare, opt_bare, batch, cfg.max_grad_norm)

        print(
            f"timing: {args.rounds} timed rounds (+1 warm-up) x {args.block} step(s) per arm, "
            "arms interleaved, order alternating; pairs = same batch, same round"
        )
        C.interleave([("trainer", trainer_block), ("bare", bare_block)], args.rounds, 1)
        ratios = C.compare(
            "trainer step",
            steps["trainer"].after(args.block),
            "bare step",
            steps["bare"].after(args.block),
        )
        ratio = ratios[args.clock]

        print("trainer-only operations, timed alone:")
        bare_median = C.median(steps["bare"].after(args.block).get(args.clock))
        loss = out_loss(bare, batches[0])
        for line in _overhead_parts(accelerator, trainer_module, loss, 200, bare_median):
            print(line)

        if args.profile or ratio > GOAL:
            n = max(3, args.block)
            print(f"profile of {n} trainer steps (cProfile, by cumulative time):")
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(n):
                trainer_step(next_batch("trainer"))
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
            print(text.getvalue())
        print(f"goal: <= {GOAL}; RATIO uses the {args.clock} clock")
        C.print_ratio("loop_overhead", ratio)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bare_step(module: Any, optimizer: Any, batch: dict, max_grad_norm: float) -> float:
    """The bare loop's step: forward, backward, clip, optimizer step, zero_grad."""
    out = module(batch)
    out["loss"].backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out["loss"].item()


def out_loss(module: Any, batch: dict) -> torch.Tensor:
    """A real loss tensor of the model (for timing the trainer's per-step extras)."""
    with torch.no_grad():
        return module(batch)["loss"]


if __name__ == "__main__":
    main()
