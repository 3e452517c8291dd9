"""Whether the data pipeline keeps up with training: data samples/s over model samples/s.

*data* arm: one epoch of the recipe's training pipeline -- the synthetic orchard prepared by
``make_synthetic_orchard`` + ``convert_minneapple``, read by ``SegmentationDataset`` (decode,
squash-resize, the recipe's flip and colour jitter) and ``Sam2Collator`` (prompt sampling)
through a ``DataLoader`` with the recipe's ``batch_size``, ``num_workers`` and the trainer's
``EpochShuffleSampler``; a new epoch (new augmentations) every round.

*model* arm: training steps over the same images, on batches from that pipeline
pre-collated in memory: forward, backward, gradient clipping and the AdamW step (the work a
training sample costs; the trainer adds nothing measurable, see loop_overhead).

The RATIO is measured at the CPU demo scale: the tiny random SAM2 config at 256 px on the
demo recipe's synthetic images (``synthetic_image_size`` 256 x 256, its ``synthetic_zoom``).
With ``--full-size`` (the default) extra lines report the same ratio for the full-size
sam2.1-hiera-tiny architecture (random init) at 1024 px, batch 1, on 720 x 1280 frames at
the MinneApple scale with the real recipe's settings (``recipes/sam2_mineapple.yaml``),
within a time budget. Rounds interleave the arms (order alternating); the ratio is the
median over rounds of the paired ratios. The clock is process CPU time when
``num_workers`` is 0 (both arms run in this process) and wall time otherwise.

    python benchmarks/data_headroom.py [--rounds 5] [--threads 1] [--no-full-size]

Goal: >= 5.
"""

from __future__ import annotations

import argparse
import shutil
from typing import Any

import _common as C

GOAL = 5.0


def _arms(
    cfg: Any,
    module: Any,
    processor: Any,
    split: Any,
    batch_size: int,
    model_steps: int | None = None,
) -> tuple[Any, Any, int, int]:
    """(data block, model block, images per data block, images per model block).

    The data block is one epoch of the pipeline; the model block trains on ``model_steps``
    pre-collated batches (default: all of one epoch), cycling through them.
    """
    from torch.utils.data import DataLoader

    from sam_hf.data.collate import Sam2Collator
    from sam_hf.training.loaders import EpochShuffleSampler
    from sam_hf.training.optim import build_optimizer

    ds = C.segmentation_dataset(split, cfg, processor)
    collator = Sam2Collator(cfg, train=True)
    sampler = EpochShuffleSampler(len(ds), cfg.seed)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        num_workers=cfg.dataloader_num_workers,
        pin_memory=cfg.dataloader_pin_memory,
    )
    # batches whose images all had no object train nothing; leave them out of the model arm
    batches = [b for b in C.precollate(ds, collator, batch_size) if b["pixel_values"].shape[0]]
    steps = len(batches) if model_steps is None else model_steps
    module.train()
    optimizer = build_optimizer(cfg, module)
    state = {"epoch": 0, "cursor": 0}

    def data_block() -> None:
        state["epoch"] += 1
        sampler.set_epoch(state["epoch"])
        ds.set_epoch(state["epoch"])
        for _ in loader:
            pass

    def model_block() -> None:
        for _ in range(steps):
            batch = batches[state["cursor"] % len(batches)]
            state["cursor"] += 1
            C.train_step(module, optimizer, batch, cfg.max_grad_norm)

    sizes = [int(b["pixel_values"].shape[0]) for b in batches]
    if len(set(sizes)) > 1 and steps % len(batches):
        raise ValueError("model_steps must cover whole epochs when batch sizes differ")
    n_model = sum(sizes[i % len(sizes)] for i in range(steps))
    return data_block, model_block, len(ds), n_model


def _headroom(
    times: dict[str, C.Timings], n_data: int, n_model: int, clock: str, label: str = ""
) -> float:
    """Print samples/s of both arms; return the median paired (data/s) / (model/s)."""
    t_data, t_model = times["data"].get(clock), times["model"].get(clock)
    sps_data = [n_data / t for t in t_data]
    sps_model = [n_model / t for t in t_model]
    ratios = C.paired_ratios(sps_data, sps_model)
    tag = f"[{label}{clock} time]"
    print(f"{tag} data pipeline: {C.describe(sps_data, 'samples/s')}")
    print(f"{tag} model training: {C.describe(sps_model, 'samples/s')}")
    print(
        f"{tag} headroom data/model: median of paired ratios {C.median(ratios):.3f} "
        f"({C.interval(ratios)}min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    return C.median(ratios)


def _full_size(args: argparse.Namespace, tmp: Any, clock: str) -> None:
    """Extra lines: the full-size hiera-tiny architecture at 1024 px, batch 1, one step a round."""
    # the real recipe's settings (objects per image, augmentation), not the demo's
    yaml = C.ROOT / "recipes" / "sam2_mineapple.yaml"
    cfg = C.recipe_config(
        tmp / "out_full", yaml=yaml, resolution=1024, per_device_train_batch_size=1
    )
    module, processor = C.full_size_sam2(cfg)
    dd = C.orchard_dataset(tmp / "full", args.full_size_images, (1280, 720), cfg.seed)
    data_block, model_block, n_data, n_model = _arms(
        cfg, module, processor, dd["train"], 1, model_steps=1
    )
    print(
        C.describe_config(
            cfg,
            [
                "resolution",
                "per_device_train_batch_size",
                "dataloader_num_workers",
                "max_objects_per_image",
            ],
        )
        + " (full size)"
    )
    print(
        f"full size: sam2.1-hiera-tiny architecture (random init, "
        f"{C.count_parameters(module) / 1e6:.1f} M parameters) at {cfg.resolution} px, batch 1, "
        f"{n_data} synthetic 720x1280 frames per data epoch, 1 training step per model block, "
        f"timed rounds within {args.full_size_budget:.0f} s"
    )
    times = C.interleave(
        [("data", data_block), ("model", model_block)],
        rounds=args.rounds,
        warmup_rounds=1,
        budget_s=args.full_size_budget,
    )
    ratio = _headroom(times, n_data, n_model, clock, label="full size, ")
    print(f"full size (extra line, not the RATIO): data_headroom at 1024 px = {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after 1 warm-up)")
    parser.add_argument("--num-images", type=int, default=16, help="synthetic orchard images")
    parser.add_argument(
        "--full-size",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also print the full-size hiera-tiny number at 1024 px (an extra line)",
    )
    parser.add_argument("--full-size-images", type=int, default=4)
    parser.add_argument(
        "--full-size-budget",
        type=float,
        default=20.0,
        help="seconds of timed full-size rounds after the warm-up (at least one round runs)",
    )
    C.add_common_args(parser)
    args = parser.parse_args()
    C.set_threads(args.threads)
    C.quiet_libraries()

    tmp = C.temp_dir("data")
    try:
        cfg = C.recipe_config(tmp / "out")
        clock = "cpu" if cfg.dataloader_num_workers == 0 else "wall"
        module, processor = C.tiny_sam2(cfg)
        size = tuple(int(v) for v in cfg.synthetic_image_size)
        dd = C.orchard_dataset(tmp, args.num_images, size, cfg.seed, cfg.synthetic_zoom)
        data_block, model_block, n_data, n_model = _arms(
            cfg, module, processor, dd["train"], cfg.per_device_train_batch_size
        )
        print(
            C.describe_config(
                cfg,
                [
                    "model_name_or_path",
                    "resolution",
                    "per_device_train_batch_size",
                    "num_workers",
                    "hflip_prob",
                    "color_jitter",
                    "max_objects_per_image",
                ],
            )
        )
        print(
            f"data: {n_data} synthetic orchard training images of {size[0]}x{size[1]} px "
            f"(synthetic_zoom {cfg.synthetic_zoom:g}) per epoch; model: tiny SAM2 "
            f"({C.count_parameters(module):,} parameters) at {cfg.resolution} px, "
            f"{n_model} images per round"
        )
        print(f"{args.rounds} timed rounds (+1 warm-up), arms interleaved; RATIO clock: {clock}")
        C.print_machine()
        times = C.interleave([("data", data_block), ("model", model_block)], args.rounds, 1)
        ratio = _headroom(times, n_data, n_model, clock)
        if args.full_size:
            _full_size(args, tmp, clock)
        print(f"goal: >= {GOAL}")
        C.print_ratio("data_headroom", ratio)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
