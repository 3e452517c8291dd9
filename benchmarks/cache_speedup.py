"""What the frozen-encoder embedding cache buys: epoch time without the cache / with it.

Model: the full-size sam2.1-hiera-tiny architecture (random weights; nothing can be
downloaded here, and random weights cost the same compute), built from an explicit
``transformers.Sam2Config`` -- Hiera hidden 96, blocks per stage [1, 2, 7, 2], heads
[1, 2, 4, 8], global attention blocks [5, 7, 9], window sizes [8, 4, 14, 7], background
position-embedding size [7, 7], FPN over backbone channels [768, 384, 192, 96] (checked
against transformers' default ``Sam2Config``, which is that checkpoint's architecture) --
wrapped in ``Sam2ForTraining`` with ``freeze_image_encoder: true``. Settings are the SAM2
recipe's (``recipes/sam2_mineapple.yaml``: 16 objects per image, point prompts, multimask,
batch 2, hflip 0.5) with ``color_jitter: 0`` (jitter cannot be cached) and fp32.

One *epoch* is a full pass over the synthetic orchard training images exactly as training
does it with ``num_workers: 0``: ``SegmentationDataset`` samples in the epoch's seeded order,
``Sam2Collator``, forward, backward, clipping and an AdamW step. The time of the training
steps alone (data loading excluded, as when DataLoader workers hide it) is printed too. The *uncached* arm runs the Hiera encoder on
every batch; the *cached* arm reads each sample's features from the on-disk cache
(``CachedEmbeddingDataset`` + ``CachedEmbeddingCollator``, what ``Sam2Task`` builds with
``cache_embeddings``) and runs only the heads. Both arms train one module with one optimizer
and alternate epoch by epoch (order reversed each round); the ratio is the median over rounds
of (uncached epoch time / cached epoch time of the same round), under wall time by default.

The one-time cost of filling the cache (encoding every image once per flip variant and
writing it) is NOT in the epoch times; it is printed on its own line, with how many epochs it
takes to pay for itself.

    python benchmarks/cache_speedup.py [--resolution 512] [--num-images 6] [--rounds 3]

Goal: >= 10.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import _common as C
import torch

GOAL = 10.0

#: The sam2.1-hiera-tiny architecture (the released checkpoint's config.json).
HIERA_TINY = {
    "hidden_size": 96,
    "blocks_per_stage": [1, 2, 7, 2],
    "num_attention_heads_per_stage": [1, 2, 4, 8],
    "global_attention_blocks": [5, 7, 9],
    "window_size_per_stage": [8, 4, 14, 7],
    "window_positional_embedding_background_size": [7, 7],
}
BACKBONE_CHANNELS = [768, 384, 192, 96]


def hiera_tiny_config(resolution: int) -> Any:
    """A ``Sam2Config`` of the sam2.1-hiera-tiny architecture for ``resolution`` px input."""
    from transformers import Sam2Config

    from sam_hf.models.sam2 import set_sam2_resolution

    cfg = Sam2Config(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {"model_type": "sam2_hiera_det_model", **HIERA_TINY},
            "backbone_channel_list": BACKBONE_CHANNELS,
        }
    )
    default = Sam2Config()
    bb, ref = cfg.vision_config.backbone_config, default.vision_config.backbone_config
    for k, v in HIERA_TINY.items():
        assert list(getattr(ref, k)) == v if isinstance(v, list) else getattr(ref, k) == v, k
        assert (list(getattr(bb, k)) if isinstance(v, list) else getattr(bb, k)) == v, k
    assert list(cfg.vision_config.backbone_channel_list) == BACKBONE_CHANNELS
    return set_sam2_resolution(cfg, resolution)


def build_module(cfg: Any) -> tuple[Any, Any]:
    from transformers import Sam2Model

    from sam_hf.models.sam2 import (
        Sam2ForTraining,
        apply_freeze,
        build_sam2_processor,
        tie_fourier_features,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        model = Sam2Model(hiera_tiny_config(cfg.resolution))
        tie_fourier_features(model)
    apply_freeze(model, cfg)
    return Sam2ForTraining(model, cfg), build_sam2_processor(cfg.resolution)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=512, help="square input size")
    parser.add_argument("--num-images", type=int, default=8, help="synthetic orchard images")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after 1 warm-up)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument(
        "--max-objects-per-image",
        type=int,
        default=0,
        help="objects prompted per image per step (0: the recipe's value, 16)",
    )
    parser.add_argument(
        "--image-size", type=int, nargs=2, default=[360, 640], help="synthetic image H W"
    )
    C.add_common_args(parser)
    args = parser.parse_args()
    C.set_threads(args.threads)
    C.quiet_libraries()

    from sam_hf import cache
    from sam_hf.data.collate import Sam2Collator
    from sam_hf.data.transforms import SegmentationDataset
    from sam_hf.trainer import EpochShuffleSampler, build_optimizer

    tmp = C.temp_dir("cache")
    try:
        cfg = C.recipe_config(
            tmp / "out",
            yaml=C.ROOT / "recipes" / "sam2_mineapple.yaml",
            resolution=args.resolution,
            freeze_image_encoder=True,
            color_jitter=0.0,
            cache_embeddings="true",
            mixed_precision="no",
            learning_rate=1e-5,
            lr_scheduler="constant",
            **(
                {"max_objects_per_image": args.max_objects_per_image}
                if args.max_objects_per_image
                else {}
            ),
        )
        module, processor = build_module(cfg)
        module.train()
        dd = C.orchard_dataset(
            tmp / "data", args.num_images, tuple(args.image_size), seed=0, zoom=2.0
        )
        ds = C.segmentation_dataset(dd["train"], cfg, processor)
        n = len(ds)
        print(
            f"model: Sam2ForTraining, full-size sam2.1-hiera-tiny architecture (random weights), "
            f"{C.count_parameters(module):,} parameters, "
            f"{sum(p.numel() for p in module.parameters() if p.requires_grad):,} trainable "
            "(image encoder frozen)"
        )
        print(
            C.describe_config(
                cfg,
                [
                    "resolution",
                    "batch_size",
                    "max_objects_per_image",
                    "prompt_type",
                    "multimask_output",
                    "hflip_prob",
                    "color_jitter",
                    "mixed_precision",
                ],
            )
        )
        print(
            f"data: {n} synthetic orchard training images of {args.image_size[0]}x"
            f"{args.image_size[1]} px"
        )
        C.print_machine()

        # ---- one-time cache fill (not part of any epoch time)
        ip = processor.image_processor
        m = module.model
        key = cache.cache_key(
            family="sam2",
            model_id="benchmark:sam2.1-hiera-tiny-random",
            revision=None,
            resolution=cfg.resolution,
            weights=cache.weights_hash(m.vision_encoder, [m.no_memory_embedding]),
            fingerprint=dd["train"]._fingerprint,
            image_mean=ip.image_mean,
            image_std=ip.image_std,
        )
        store = cache.EmbeddingCache(tmp / "data" / cache.CACHE_DIRNAME, key)
        plain = SegmentationDataset(
            dd["train"], cfg.resolution, ip.image_mean, ip.image_std, cfg.seed, train=False
        )
        variants = cache.flip_variants(cfg.hflip_prob)
        t0 = time.perf_counter()
        written = store.fill(
            lambda i: plain[i]["pixel_values"], n, variants, module.encoder_features
        )
        fill_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in Path(store.dir).glob("*.safetensors")) / 2**20
        cached_ds = cache.CachedEmbeddingDataset(ds, store)

        collate = Sam2Collator(cfg, train=True)
        cached_collate = cache.CachedEmbeddingCollator(collate)
        optimizer = build_optimizer(cfg, module)
        sampler = EpochShuffleSampler(n, cfg.seed)
        epoch_counter = [0]

        step_s: dict[str, list[float]] = {"uncached": [], "cached": []}

        def epoch(name: str, dataset: Any, collator: Any) -> None:
            e = epoch_counter[0]
            epoch_counter[0] += 1
            sampler.set_epoch(e)
            dataset.set_epoch(e)
            order = list(sampler)
            steps = 0.0
            for i in range(0, n, cfg.batch_size):
                batch = collator([dataset[j] for j in order[i : i + cfg.batch_size]])
                t = time.perf_counter()
                C.train_step(module, optimizer, batch, cfg.max_grad_norm)
                steps += time.perf_counter() - t
            step_s[name].append(steps)

        times = C.interleave(
            [
                ("uncached", lambda: epoch("uncached", ds, collate)),
                ("cached", lambda: epoch("cached", cached_ds, cached_collate)),
            ],
            rounds=args.rounds,
            warmup_rounds=1,
        )
        ratios = C.compare("uncached", times["uncached"], "cached", times["cached"], "s", 1.0)
        un = C.median(times["uncached"].get(args.clock))
        ca = C.median(times["cached"].get(args.clock))
        print(
            f"one-time cache fill (not in the epoch times): {fill_s:.1f} s wall for {written} "
            f"image variants ({len(variants)} flip variants x {n} images), {size_mb:.0f} MB on "
            f"disk; pays for itself after {fill_s / max(un - ca, 1e-9):.2f} epochs"
        )
        # the first (warm-up) round's epochs are not in `times`
        un_steps, ca_steps = step_s["uncached"][1:], step_s["cached"][1:]
        step_ratio = C.median(C.paired_ratios(un_steps, ca_steps))
        print(
            f"[wall time] training steps only (data loading excluded): uncached "
            f"{C.describe(un_steps)}, cached {C.describe(ca_steps)}; median of paired ratios "
            f"{step_ratio:.4f}"
        )
        ratio = ratios[args.clock]
        verdict = "meets" if ratio >= GOAL else "misses"
        print(
            f"epoch time uncached/cached ({args.clock} clock): {ratio:.2f} ({verdict} the "
            f"goal >= {GOAL:g})"
        )
        C.print_ratio("cache_speedup", ratio)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
