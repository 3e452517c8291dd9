"""sam_hf's SAM2 training step against Meta's official trainer and a plain transformers loop.

    python benchmarks/peer_sam2.py [--resolution 384] [--images 2] [--objects 4] [--clicks 7]
        [--rounds 2] [--device cpu|cuda]

Needs Meta's ``sam2`` package with its ``training`` module (``pip install -e '.[official]'``;
here: ``/work/venv-off/bin/python benchmarks/peer_sam2.py``).

One model, three ways to train it, on the same batch:

- *sam_hf*: ``Sam2ForTraining`` (HF ``Sam2Model`` inside) through the trainer's own step
  (``sam_hf.training.step.training_step`` with ``build_accelerator``, ``build_optimizer``,
  ``build_scheduler`` and ``accelerator.prepare``, as ``train()`` runs it per batch);
- *official*: ``training.model.sam2.SAM2Train`` built from the official
  ``configs/sam2.1/sam2.1_hiera_t.yaml`` (``_target_`` switched to ``SAM2Train``, as the
  official training configs do) with ``training.loss_fns.MultiStepMultiMasksAndIous``
  (the official weights 20 / 1 / 1 / 1, ``supervise_all_iou``, L1 IoU loss, object scores),
  AdamW with the same learning rate, weight decay and gradient clipping;
- *plain*: a loop in the style of the HF SAM fine-tuning examples: every (image, object)
  pair is its own sample with one point prompt (single-mask output, sigmoid BCE + dice on the
  low-res mask against the downsampled ground truth), in mini-batches of 2 pairs, so the
  image encoder runs once per object; gradients are accumulated over the batch's pairs and
  AdamW steps once.

Resolution: 384 px by default on the CPU (a step of 2 images x 4 objects x 8 prompts takes
~13-16 s per arm at 512 px on this 2-core CPU, which with three arms and warm-up exceeds
``run_all``'s budget); the GPU suite runs 1024 px with 8 objects per image.

Same work: the full-size sam2.1-hiera-tiny architecture (random weights: nothing can be
downloaded here, and weights do not change the compute). The official model is built first
and its weights are converted into the HF model (``sam_hf.convert.sam2``), so all three arms
start from identical weights. The batch is ``--images`` synthetic orchard frames at the
MinneApple scale with ``--objects`` objects each, collated by ``Sam2Collator``; sam_hf and
the official trainer both prompt each object with one point sampled from its mask and then
add ``--clicks`` correction clicks from the error region (the official default 7), each
click re-running the prompt encoder and mask decoder with the previous mask logits as mask
prompt, multimask output on the first click, and compute the loss on every step's masks at
full resolution. Points are drawn by each arm's own sampler (the official one draws them
inside its forward), so the clicks are equal in number and rule, not in position. The
official model also runs its memory encoder on each object's final mask (its video path;
part of its cost).

Speed: samples (images) per second of one training step, timed in interleaved rounds (after
one warm-up round), arms alternating order each round; the clock is process CPU time on the
CPU (one thread, everything in this process), wall time with ``torch.cuda.synchronize`` on a
GPU. Memory: a separate pass after the timing, one step per arm. On a GPU, the peak of
``torch.cuda.max_memory_allocated`` during the step minus the memory allocated before it. On
the CPU (tracemalloc does not see torch's allocations) a thread samples the process's
resident set size (psutil RSS) every 2 ms during the step; the peak minus the RSS just
before it (after ``gc.collect()`` and glibc ``malloc_trim(0)``, so memory freed by the
previous arm is returned to the OS and cannot hide this one's growth) is the step's peak.
Both measure what a step adds on top of the resident weights and optimizer state
(activations, gradients, temporaries), which is what differs between the arms.

Ratios: ``RATIO peer_sam2_speed`` = sam_hf samples/s / official samples/s (goal >= 1.0),
``RATIO peer_sam2_memory`` = official step peak / sam_hf step peak (goal >= 1.0), the same two
against the plain loop as ``RATIO peer_sam2_plain_speed`` (sam_hf / plain samples/s) and
``RATIO peer_sam2_plain_memory`` (plain / sam_hf step peak), printed first (no goal).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import shutil
import threading
import time
from typing import Any

import _common as C
import torch
import torch.nn.functional as F

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
GOAL = 1.0
#: The official loss weights (sam2.1 training configs): focal, dice, IoU, object score.
OFFICIAL_WEIGHTS = {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}


def build_official(res: int, clicks: int, device: str) -> Any:
    """``SAM2Train`` of sam2.1-hiera-tiny at ``res`` px, point prompts on single images."""
    from sam2.build_sam import build_sam2

    overrides = [
        "++model._target_=training.model.sam2.SAM2Train",
        f"++model.image_size={res}",
        f"++model.num_correction_pt_per_frame={clicks}",
        "++model.prob_to_use_pt_input_for_train=1.0",
        "++model.prob_to_use_box_input_for_train=0.0",
        "++model.prob_to_sample_from_gt_for_train=0.0",
        "++model.num_frames_to_correct_for_train=1",
        "++model.num_init_cond_frames_for_train=1",
    ]
    return build_sam2(
        CONFIG,
        None,
        device=device,
        mode="train",
        hydra_overrides_extra=overrides,
        apply_postprocessing=False,
    )


def official_loss() -> Any:
    from training.loss_fns import MultiStepMultiMasksAndIous

    return MultiStepMultiMasksAndIous(
        weight_dict=dict(OFFICIAL_WEIGHTS),
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )


def official_datapoint(batch: dict[str, Any], device: torch.device) -> Any:
    """The collated batch as the official ``BatchedVideoDatapoint`` (one frame per image;
    the valid objects only, each mapped to its image)."""
    from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

    valid = batch["object_valid"]
    img_idx, obj_idx = valid.nonzero(as_tuple=True)
    n, res = int(img_idx.numel()), batch["pixel_values"].shape[-1]
    frame_idx = torch.stack([torch.zeros_like(img_idx), img_idx], dim=-1).int()
    ident = torch.stack([img_idx, obj_idx, torch.zeros_like(img_idx)], dim=-1)
    meta = BatchedVideoMetaData(
        unique_objects_identifier=ident[None],
        frame_orig_size=torch.full((1, n, 2), res, dtype=torch.long),
        batch_size=[1],
    )
    dp = BatchedVideoDatapoint(
        img_batch=batch["pixel_values"][None],
        obj_to_frame_idx=frame_idx[None],
        masks=batch["masks"][img_idx, obj_idx][None],
        metadata=meta,
        dict_key="peer",
        batch_size=[1],
    )
    return dp.to(device)


def plain_pairs(batch: dict[str, Any]) -> list[tuple[torch.Tensor, ...]]:
    """(image, point, label, low-res target) per valid object: one sample per object."""
    out = []
    for b, o in zip(*batch["object_valid"].nonzero(as_tuple=True)):
        mask = batch["masks"][b, o].float()[None, None]
        low = F.interpolate(mask, scale_factor=0.25, mode="nearest")[0, 0]
        out.append(
            (
                batch["pixel_values"][b],
                batch["input_points"][b, o, :1],
                batch["input_labels"][b, o, :1],
                low,
            )
        )
    return out


def plain_step(model: Any, optimizer: Any, pairs: list, max_grad_norm: float, bs: int = 2) -> float:
    """The HF-example loop over (image, one point) samples in mini-batches of ``bs``."""
    chunks = [pairs[i : i + bs] for i in range(0, len(pairs), bs)]
    total = 0.0
    for chunk in chunks:
        pixels = torch.stack([c[0] for c in chunk])
        points = torch.stack([c[1] for c in chunk])[:, None]  # (B, 1 object, 1 point, 2)
        labels = torch.stack([c[2] for c in chunk])[:, None]
        target = torch.stack([c[3] for c in chunk])
        out = model(
            pixel_values=pixels, input_points=points, input_labels=labels, multimask_output=False
        )
        logits = out.pred_masks[:, 0, 0]
        prob = logits.sigmoid()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        inter = (prob * target).flatten(1).sum(-1)
        dice = 1 - (2 * inter + 1) / (prob.flatten(1).sum(-1) + target.flatten(1).sum(-1) + 1)
        loss = (bce + dice.mean()) / len(chunks)
        loss.backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


class PeakMemory:
    """What one step adds at its peak: CUDA allocated bytes, or sampled RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.libc = None
        if not self.cuda:
            try:
                self.libc = ctypes.CDLL("libc.so.6")
            except OSError:
                pass

    def measure(self, fn: Any) -> float:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**30
        import psutil

        if self.libc is not None:
            self.libc.malloc_trim(0)
        proc = psutil.Process()
        base = proc.memory_info().rss
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.002)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            fn()
        finally:
            done.set()
            t.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        return (peak[0] - base) / 2**30


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--resolution",
        type=int,
        default=384,
        help="square input size (1024 on a GPU; 384 keeps a CPU run within run_all's budget)",
    )
    ap.add_argument("--images", type=int, default=2, help="images per batch")
    ap.add_argument("--objects", type=int, default=4, help="objects prompted per image")
    ap.add_argument("--clicks", type=int, default=7, help="correction clicks per object")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds (after 1 warm-up)")
    ap.add_argument("--device", default="cpu")
    C.add_common_args(ap)
    args = ap.parse_args(argv)
    C.set_threads(args.threads)
    C.quiet_libraries()
    try:
        import training.model.sam2  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            f"peer_sam2 needs Meta's sam2 package with its training module: {e}"
        ) from e

    from transformers import Sam2Model

    from sam_hf.convert import sam2 as conv
    from sam_hf.data.collate import Sam2Collator
    from sam_hf.models.sam2_training import Sam2ForTraining
    from sam_hf.training.optim import build_optimizer, build_scheduler
    from sam_hf.training.startup import build_accelerator
    from sam_hf.training.step import StepWindow, training_step

    dev = torch.device(args.device)
    res = args.resolution
    tmp = C.temp_dir("peer_sam2")
    try:
        cfg = C.recipe_config(
            tmp / "out",
            yaml=C.ROOT / "recipes" / "sam2_mineapple.yaml",
            resolution=res,
            per_device_train_batch_size=args.images,
            max_objects_per_image=args.objects,
            num_correction_clicks=args.clicks,
            gt_click_prob=0.0,
            object_score_gating=True,
            empty_target_prob=0.0,
            loss_bce=OFFICIAL_WEIGHTS["loss_class"],
            hflip_prob=0.0,
            color_jitter=0.0,
            bf16=False,
            learning_rate=1e-5,
            lr_scheduler_type="constant",
        )
        # ---- identical weights: the official model first, converted into the HF one
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            official = build_official(res, args.clicks, args.device).train()
        hf_cfg = conv.sam2_config("sam2.1-hiera-tiny", res)
        state, _, _ = conv.official_to_hf(official.state_dict(), config=hf_cfg)
        with torch.device(dev):
            model = Sam2Model(hf_cfg)
        model.load_state_dict(state)
        plain_model = copy.deepcopy(model).train()
        module = Sam2ForTraining(model, cfg).train()
        loss_fn = official_loss()

        from sam_hf.models.sam2 import build_sam2_processor

        processor = build_sam2_processor(res)
        dd = C.orchard_dataset(tmp / "data", args.images + 2, (360, 640), seed=0, zoom=1.0)
        ds = C.segmentation_dataset(dd["train"], cfg, processor)
        batch = Sam2Collator(cfg, train=True)([ds[i] for i in range(args.images)])
        n_obj = int(batch["object_valid"].sum())
        if n_obj != args.images * args.objects:
            raise SystemExit(f"the batch holds {n_obj} objects, not {args.images * args.objects}")

        accelerator = build_accelerator(cfg)
        opt = build_optimizer(cfg, module)
        sched = build_scheduler(cfg, opt, total_steps=1000)
        prepared, opt, sched = accelerator.prepare(module, opt, sched)
        window = StepWindow()
        hf_batch = C.to_device(batch, accelerator.device)
        dp = official_datapoint(batch, dev)
        pairs = [tuple(t.to(dev) for t in p) for p in plain_pairs(batch)]
        wd, lr = cfg.weight_decay, cfg.learning_rate
        opt_off = torch.optim.AdamW(official.parameters(), lr=lr, weight_decay=wd)
        opt_plain = torch.optim.AdamW(plain_model.parameters(), lr=lr, weight_decay=wd)
        losses: dict[str, list[float]] = {"sam_hf": [], "official": [], "plain": []}

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize()

        def step_sam_hf() -> None:
            stats = training_step(accelerator, prepared, opt, sched, hf_batch, cfg, window)
            losses["sam_hf"].append(float(stats["loss"]))
            sync()

        def step_official() -> None:
            out = official(dp)
            loss = loss_fn(out, dp.masks)["core_loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(official.parameters(), cfg.max_grad_norm)
            opt_off.step()
            opt_off.zero_grad(set_to_none=True)
            losses["official"].append(float(loss.detach()))
            sync()

        def step_plain() -> None:
            losses["plain"].append(plain_step(plain_model, opt_plain, pairs, cfg.max_grad_norm))
            sync()

        arms = [("sam_hf", step_sam_hf), ("official", step_official), ("plain", step_plain)]
        params = C.count_parameters(model)
        print(
            f"model: sam2.1-hiera-tiny architecture, random weights (official build converted "
            f"into the HF model: identical), {params:,} HF parameters, "
            f"{C.count_parameters(official):,} official (with its memory modules)"
        )
        print(
            f"work per step: {args.images} images x {args.objects} objects at {res} px, one "
            f"point + {args.clicks} correction clicks per object (sam_hf, official; multimask "
            f"on the first), loss on every step's masks; plain loop: {n_obj} (image, point) "
            "samples in mini-batches of 2, encoder per sample, one decoder pass each"
        )
        C.print_machine()
        clock = "wall" if dev.type == "cuda" else "cpu"
        times = C.interleave(arms, rounds=args.rounds, warmup_rounds=1)
        peaks = {name: PeakMemory(dev).measure(fn) for name, fn in arms}
        print(
            "losses (first, last): "
            + ", ".join(f"{k} {v[0]:.3f} -> {v[-1]:.3f}" for k, v in losses.items())
        )
        sps = {k: args.images / C.median(t.get(clock)) for k, t in times.items()}
        for k, t in times.items():
            print(
                f"[{clock} time] {k:<8} step {C.describe(t.get(clock))}: "
                f"{sps[k]:.4g} samples/s; step peak memory {peaks[k]:.3f} GiB"
            )
        speed = C.paired_ratios(times["official"].get(clock), times["sam_hf"].get(clock))
        plain = C.paired_ratios(times["plain"].get(clock), times["sam_hf"].get(clock))
        how = "CUDA max_memory_allocated" if dev.type == "cuda" else "sampled RSS (psutil)"
        print(
            f"sam_hf / official samples/s per round: {', '.join(f'{x:.3f}' for x in speed)}; "
            f"memory ({how}, above resident weights and optimizer state): official / sam_hf "
            f"{peaks['official'] / peaks['sam_hf']:.3f}"
        )
        print(
            f"plain loop: sam_hf / plain samples/s per round {', '.join(f'{x:.3f}' for x in plain)}"
            f"; plain / sam_hf step peak {peaks['plain'] / peaks['sam_hf']:.3f} (the plain loop "
            "does less decoder work: no correction clicks, one mask per sample)"
        )
        C.print_ratio("peer_sam2_plain_speed", C.median(plain))
        C.print_ratio("peer_sam2_plain_memory", peaks["plain"] / peaks["sam_hf"])
        C.print_ratio("peer_sam2_speed", C.median(speed))
        C.print_ratio("peer_sam2_memory", peaks["official"] / peaks["sam_hf"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
