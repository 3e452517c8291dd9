"""Peak GPU memory and step time of full-size SAM3 / SAM2.1-large under each memory option.

    python benchmarks/gpu_memory.py [--steps 3] [--only sam3|sam2] [--options fp32,bf16,...]
    python benchmarks/gpu_memory.py --smoke     # tiny models on the CPU: checks the script runs

Random-init full-size configs (no download): SAM3 at 1008 px, batch 1 image x 4 text queries;
SAM2.1-hiera-large at 1024 px, batch 2 images x 8 point-prompted objects. Each option runs
a few AdamW training steps (forward, mask focal + dice loss on every predicted mask, backward,
step) in a fresh model; the first step is warm-up, the rest are timed. Options:
fp32 | bf16 autocast | bf16 + activation checkpointing (sam_hf.models.common) | the same with
bitsandbytes' 8-bit AdamW (``optim: adamw_bnb_8bit``, built by the trainer's
``build_optimizer``) | bf16 + checkpointing with the vision encoder frozen (left out of the
optimizer). Prints one line per option and, last, ``RATIO sam3_full_bf16_ckpt_gb <peak GB>``:
the lowest peak of a *full* fine-tune of SAM3 (every parameter trained) with bf16 and
checkpointing, 8-bit AdamW included when bitsandbytes is installed (goal <= 12 GB). Needs a
CUDA GPU, except ``--smoke``, which runs tiny random models for 2 steps on the CPU (no memory
numbers) so the script is known to work before GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import gc
import time

import _common as C
import torch
import torch.nn.functional as F
from transformers import Sam2Model, Sam3Config, Sam3Model

from sam_hf.models.common import enable_activation_checkpointing
from sam_hf.models.freezing import set_requires_grad
from sam_hf.models.sam2 import tiny_sam2_config
from sam_hf.models.sam3 import tiny_sam3_config

OPTIONS = ("fp32", "bf16", "bf16+ckpt", "bf16+ckpt+8bit", "bf16+ckpt+frozen_vision")
#: The parts an option name may combine with ``+``: bf16 autocast, activation checkpointing,
#: 8-bit AdamW, the text encoder frozen (SAM3 only), the vision encoder frozen.
TOKENS = ("fp32", "bf16", "ckpt", "8bit", "frozen_text", "frozen_vision")


def option_tokens(option: str) -> set[str]:
    """The parts of ``option`` (e.g. ``bf16+ckpt+8bit`` -> {bf16, ckpt, 8bit}); unknown parts
    raise, so a typo cannot silently measure something else."""
    parts = set(option.split("+"))
    unknown = sorted(parts - set(TOKENS))
    if unknown:
        raise ValueError(f"option {option!r}: unknown parts {unknown}; choose from {TOKENS}")
    return parts


def has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    focal = (ce * (1 - (p * target + (1 - p) * (1 - target))) ** 2).mean()
    inter = (p * target).flatten(1).sum(-1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(-1) + target.flatten(1).sum(-1) + 1)
    return 20 * focal + dice.mean()


def sam2_step_fn(model: Sam2Model, dev: torch.device, res: int = 1024):
    b, n = 2, 8
    pixels = torch.randn(b, 3, res, res, device=dev)
    points = torch.randint(0, res, (b, n, 1, 2), device=dev).float()
    labels = torch.ones(b, n, 1, dtype=torch.long, device=dev)
    target = (torch.rand(b, n, 3, res // 4, res // 4, device=dev) > 0.5).float()

    def step() -> torch.Tensor:
        out = model(
            pixel_values=pixels, input_points=points, input_labels=labels, multimask_output=True
        )
        return mask_loss(out.pred_masks.flatten(0, 2), target.flatten(0, 2))

    return step


def sam3_step_fn(model: Sam3Model, dev: torch.device, res: int = 1008):
    q = 4
    pixels = torch.randn(1, 3, res, res, device=dev)
    ids = torch.randint(1, 49000, (q, 32), device=dev)
    mask = torch.ones(q, 32, dtype=torch.long, device=dev)

    def step() -> torch.Tensor:
        vision = model.get_vision_features(pixel_values=pixels)
        loss = 0.0
        for i in range(q):  # one image encoding serves every text query, as in training
            out = model(
                vision_embeds=vision, input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]
            )
            tgt = (torch.rand_like(out.pred_masks, dtype=torch.float32) > 0.9).float()
            loss = loss + mask_loss(out.pred_masks.flatten(0, 1), tgt.flatten(0, 1))
            loss = loss + F.binary_cross_entropy_with_logits(
                out.pred_logits.float(), torch.zeros_like(out.pred_logits, dtype=torch.float32)
            )
        return loss

    return step


def run(name: str, build, make_step, option: str, steps: int, dev: torch.device) -> dict:
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    with torch.device(dev):  # initialise on the GPU: seconds instead of minutes on the CPU
        model = build().train()
    parts = option_tokens(option)
    if "ckpt" in parts:
        enable_activation_checkpointing(model)
    if "frozen_vision" in parts:
        set_requires_grad(model.vision_encoder, False)
    if "frozen_text" in parts:
        set_requires_grad(model.text_encoder, False)
    opt = C.trainer_optimizer(model, "adamw_bnb_8bit" if "8bit" in parts else "adamw_torch")
    step = make_step(model, dev)
    dtype = torch.bfloat16 if "bf16" in parts else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss = step()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        losses.append(float(loss.detach()))
        if i:
            times.append(time.perf_counter() - t0)
    if not all(torch.isfinite(torch.tensor(losses))):
        raise RuntimeError(f"{name} {option}: non-finite loss {losses}")
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else float("nan")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    res = {
        "model": name,
        "option": option,
        "peak_gb": peak,
        "reserved_gb": reserved,
        "step_s": sum(times) / max(len(times), 1),
        "trainable": trainable,
        "full": trainable == sum(p.numel() for p in model.parameters()),
    }
    shown = f"{peak:6.2f} GiB (reserved {reserved:.2f})" if cuda else "n/a (CPU)"
    print(
        f"{name:10s} {option:44s} peak {shown}  step {res['step_s']:.3f} s  "
        f"trainable {trainable / 1e6:.1f} M",
        flush=True,
    )
    del model, opt, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", choices=["sam2", "sam3"], default=None)
    ap.add_argument(
        "--options",
        default=",".join(OPTIONS),
        help=f"comma-separated options, each parts of {TOKENS} joined by '+'",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny models, 2 steps, on the CPU")
    args = ap.parse_args()
    options = [o for o in args.options.split(",") if o]
    try:
        [option_tokens(o) for o in options]
    except ValueError as e:
        raise SystemExit(str(e)) from e
    if not has_bitsandbytes():
        print("bitsandbytes is not installed: skipping the 8-bit AdamW options")
        options = [o for o in options if "8bit" not in option_tokens(o)]
    if args.smoke:
        dev, steps = torch.device("cpu"), 2
        sam3_res, sam2_res = 56, 64
        build_sam3 = lambda: Sam3Model(tiny_sam3_config(sam3_res))  # noqa: E731
        build_sam2 = lambda: Sam2Model(tiny_sam2_config(sam2_res))  # noqa: E731
        sam3_name, sam2_name = "sam3-tiny", "sam2-tiny"
        print("smoke run: tiny random models on the CPU (no memory numbers)")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_memory.py needs a CUDA GPU (or --smoke for a CPU check).")
        dev, steps = torch.device("cuda"), args.steps
        sam3_res, sam2_res = 1008, 1024
        build_sam3 = lambda: Sam3Model(Sam3Config())  # noqa: E731
        build_sam2 = lambda: Sam2Model(C.sam2_large_config(sam2_res))  # noqa: E731
        sam3_name, sam2_name = "sam3", "sam2.1-L"
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    results = []
    if args.only in (None, "sam3"):
        for o in options:
            step_fn = lambda m, d: sam3_step_fn(m, d, sam3_res)  # noqa: E731
            results.append(run(sam3_name, build_sam3, step_fn, o, steps, dev))
    if args.only in (None, "sam2"):
        for o in options:
            step_fn = lambda m, d: sam2_step_fn(m, d, sam2_res)  # noqa: E731
            results.append(run(sam2_name, build_sam2, step_fn, o, steps, dev))
    full = [
        r["peak_gb"]
        for r in results
        if r["model"] == "sam3" and r["option"] in ("bf16+ckpt", "bf16+ckpt+8bit")
    ]
    if full and not args.smoke:
        print(f"RATIO sam3_full_bf16_ckpt_gb {min(full):.2f}")


if __name__ == "__main__":
    main()
