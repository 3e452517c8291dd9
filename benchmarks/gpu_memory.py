"""Peak GPU memory and step time of full-size SAM3 / SAM2.1-large under each memory option.

    python benchmarks/gpu_memory.py [--steps 3] [--only sam3|sam2]

Random-init full-size configs (no download): SAM3 at 1008 px, batch 1 image x 4 text queries;
SAM2.1-hiera-large at 1024 px, batch 2 images x 8 point-prompted objects. Each option runs
a few AdamW training steps (forward, mask focal + dice loss on every predicted mask, backward,
step) in a fresh model; the first step is warm-up, the rest are timed. Options:
fp32 | bf16 autocast | bf16 + activation checkpointing (sam_hf.models.common) | the same with
the vision encoder frozen (left out of the optimizer). Prints one line per option and, last,
``RATIO sam3_full_bf16_ckpt_gb <peak GB>`` (goal <= 12 GB). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.nn.functional as F
from transformers import Sam2Config, Sam2Model, Sam3Config, Sam3Model

from sam_hf.models.common import enable_activation_checkpointing, set_requires_grad


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    focal = (ce * (1 - (p * target + (1 - p) * (1 - target))) ** 2).mean()
    inter = (p * target).flatten(1).sum(-1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(-1) + target.flatten(1).sum(-1) + 1)
    return 20 * focal + dice.mean()


def sam2_step_fn(model: Sam2Model, dev: torch.device):
    b, n = 2, 8
    pixels = torch.randn(b, 3, 1024, 1024, device=dev)
    points = torch.randint(0, 1024, (b, n, 1, 2), device=dev).float()
    labels = torch.ones(b, n, 1, dtype=torch.long, device=dev)
    target = (torch.rand(b, n, 3, 256, 256, device=dev) > 0.5).float()

    def step() -> torch.Tensor:
        out = model(
            pixel_values=pixels, input_points=points, input_labels=labels, multimask_output=True
        )
        return mask_loss(out.pred_masks.flatten(0, 2), target.flatten(0, 2))

    return step


def sam3_step_fn(model: Sam3Model, dev: torch.device):
    q = 4
    pixels = torch.randn(1, 3, 1008, 1008, device=dev)
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
    torch.manual_seed(0)
    with torch.device(dev):  # initialise on the GPU: seconds instead of minutes on the CPU
        model = build().train()
    if "ckpt" in option:
        enable_activation_checkpointing(model)
    if "frozen" in option:
        set_requires_grad(model.vision_encoder, False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    step = make_step(model, dev)
    dtype = torch.bfloat16 if "bf16" in option else None
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = step()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    res = {
        "model": name,
        "option": option,
        "peak_gb": peak,
        "step_s": sum(times) / max(len(times), 1),
    }
    print(f"{name:10s} {option:22s} peak {peak:6.2f} GB  step {res['step_s']:.3f} s", flush=True)
    del model, opt, step
    gc.collect()
    torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", choices=["sam2", "sam3"], default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_memory.py needs a CUDA GPU.")
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    options = ["fp32", "bf16", "bf16+ckpt", "bf16+ckpt+frozen_vision"]
    results = []
    if args.only in (None, "sam3"):
        for o in options:
            results.append(
                run("sam3", lambda: Sam3Model(Sam3Config()), sam3_step_fn, o, args.steps, dev)
            )
    if args.only in (None, "sam2"):
        large = dict(
            vision_config=dict(
                model_type="sam2_vision_model",
                backbone_config=dict(
                    model_type="sam2_hiera_det_model",
                    hidden_size=144,
                    num_attention_heads=2,
                    blocks_per_stage=[2, 6, 36, 4],
                    embed_dim_per_stage=[144, 288, 576, 1152],
                    num_attention_heads_per_stage=[2, 4, 8, 16],
                    window_size_per_stage=[8, 4, 16, 8],
                    global_attention_blocks=[23, 33, 43],
                    window_positional_embedding_background_size=[7, 7],
                ),
                backbone_channel_list=[1152, 576, 288, 144],
            )
        )
        for o in options:
            results.append(
                run(
                    "sam2.1-L",
                    lambda: Sam2Model(Sam2Config(**large)),
                    sam2_step_fn,
                    o,
                    args.steps,
                    dev,
                )
            )
    sam3 = [r for r in results if r["model"] == "sam3" and r["option"] == "bf16+ckpt"]
    if sam3:
        print(f"RATIO sam3_full_bf16_ckpt_gb {sam3[0]['peak_gb']:.2f}")


if __name__ == "__main__":
    main()
