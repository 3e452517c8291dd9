"""Every GPU figure the README quotes, in one script (one GPU, under 8 minutes).

    python benchmarks/gpu_suite.py                 # needs a CUDA GPU
    python benchmarks/gpu_suite.py --smoke         # tiny models on the CPU, < 60 s: checks it
    python benchmarks/gpu_suite.py --sections memory resolution   # a subset

Sections (each prints its own lines; ``--sections`` picks some):

- ``memory``: peak GPU memory (``torch.cuda.max_memory_allocated``, GiB; reserved in brackets)
  and step time of full-size random-init SAM3 (1008 px, 1 image x 4 text queries) and
  SAM2.1-hiera-large (1024 px, 2 images x 8 point-prompted objects) under a ladder of memory
  options, each a fresh model and a few AdamW steps (``gpu_memory.run``: the first step is
  warm-up, the rest are timed): fp32, bf16 autocast, + activation checkpointing, + 8-bit AdamW
  (bitsandbytes), + text encoder frozen (SAM3 only), + vision encoder frozen. Goal lines: a
  SAM3 *full* fine-tune (every parameter trained) <= 12 GiB; a 24 GB-card configuration that
  trains at least the detector and the ViT backbone (reserved peak + ~0.5 GiB of CUDA context
  within 22.35 GiB = 24 GB).
- ``resolution``: SAM3 training (bf16 + checkpointing, every parameter trained) and evaluation
  (a no-grad forward) at 1008, 840, 672 and 560 px, with the model's position tables
  recomputed for each size by ``sam_hf.models.sam3.set_sam3_resolution`` (what
  ``build_sam3`` does for the ``resolution`` config key); peak memory and step time per size.
- ``cache``: epoch time with and without the embedding cache at MinneApple density and its
  efficiency against the ideal (``cache_speedup.py`` with SAM2.1-large at 1024 px and
  ``cache_speedup_sam3.py`` at 1008 px, run in this process on the GPU).
- ``peer``: sam_hf's SAM2 training step against the official ``sam2`` trainer's and a plain
  transformers loop (``peer_sam2.py`` at 1024 px), when the official ``training`` package is
  importable; otherwise a line says it was skipped and why.

``--smoke`` runs the same code paths on tiny random models on the CPU (no memory numbers,
short data), so the script is known to work before GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import _common as C
import gpu_memory as G
import torch

SECTIONS = ("memory", "resolution", "cache", "peer")
SAM3_RESOLUTIONS = (1008, 840, 672, 560)
#: The same sizes for the tiny smoke model (SAM3 tokens of 14 px: 8, 7, 6, 5 per side).
SMOKE_RESOLUTIONS = (112, 98, 84, 70)
FULL_GOAL_GIB = 12.0
#: A 24 GB card holds 24e9 bytes = 22.35 GiB; the CUDA context takes about 0.5 GiB of it.
CARD_24GB_GIB = 24e9 / 2**30 - 0.5


def ladder(model: str, bnb: bool) -> list[str]:
    """The memory options, each adding one saving to the previous (SAM2 has no text encoder)."""
    base = "bf16+ckpt+8bit" if bnb else "bf16+ckpt"
    steps = ["fp32", "bf16", "bf16+ckpt"] + (["bf16+ckpt+8bit"] if bnb else [])
    if model == "sam3":
        steps += [f"{base}+frozen_text", f"{base}+frozen_text+frozen_vision"]
    else:
        steps += [f"{base}+frozen_vision"]
    return steps


def builders(smoke: bool) -> dict[str, Any]:
    """Model builders, inputs sizes and names for the smoke (tiny, CPU) or full (GPU) run."""
    from transformers import Sam2Model, Sam3Config, Sam3Model

    from sam_hf.models.sam2 import tiny_sam2_config
    from sam_hf.models.sam3 import tiny_sam3_config

    if smoke:
        return {
            "dev": torch.device("cpu"),
            "sam3": (lambda: Sam3Model(tiny_sam3_config(56)), 56, "sam3-tiny"),
            "sam2": (lambda: Sam2Model(tiny_sam2_config(64)), 64, "sam2-tiny"),
            "sam3_at": lambda res: Sam3Model(tiny_sam3_config(224)),
            "resolutions": SMOKE_RESOLUTIONS,
        }
    return {
        "dev": torch.device("cuda"),
        "sam3": (lambda: Sam3Model(Sam3Config()), 1008, "sam3"),
        "sam2": (lambda: Sam2Model(C.sam2_large_config(1024)), 1024, "sam2.1-L"),
        "sam3_at": lambda res: Sam3Model(Sam3Config()),
        "resolutions": SAM3_RESOLUTIONS,
    }


def memory_section(b: dict[str, Any], steps: int, bnb: bool) -> list[dict[str, Any]]:
    print("\n== memory: full-size fine-tune, peak memory and step time per option", flush=True)
    results = []
    for model in ("sam3", "sam2"):
        build, res, name = b[model]
        make = G.sam3_step_fn if model == "sam3" else G.sam2_step_fn
        for option in ladder(model, bnb):
            step_fn = lambda m, d, make=make, res=res: make(m, d, res)  # noqa: E731
            results.append(G.run(name, build, step_fn, option, steps, b["dev"]))
    return results


def memory_verdicts(results: list[dict[str, Any]], smoke: bool) -> None:
    """The two SAM3 goal lines (printed as n/a on the CPU)."""
    sam3 = [r for r in results if r["model"].startswith("sam3")]
    full = [r for r in sam3 if r["full"] and "bf16" in r["option"]]
    card = [r for r in sam3 if "frozen_vision" not in r["option"] and r["option"] != "fp32"]
    if smoke:
        print(f"goal lines (GPU only): SAM3 full fine-tune <= {FULL_GOAL_GIB:g} GiB; 24 GB card")
        return
    if full:
        best = min(full, key=lambda r: r["peak_gb"])
        verdict = "meets" if best["peak_gb"] <= FULL_GOAL_GIB else "misses"
        print(
            f"SAM3 full fine-tune, lowest peak: {best['peak_gb']:.2f} GiB with {best['option']} "
            f"({verdict} the goal <= {FULL_GOAL_GIB:g} GiB)"
        )
    fits = [r for r in card if r["reserved_gb"] <= CARD_24GB_GIB]
    if fits:
        best = max(fits, key=lambda r: r["trainable"])
        print(
            f"24 GB card: {best['option']} trains {best['trainable'] / 1e6:.0f} M parameters "
            f"(detector and ViT backbone included), reserved peak {best['reserved_gb']:.2f} GiB "
            f"<= {CARD_24GB_GIB:.2f}"
        )
    else:
        print("24 GB card: no option training the ViT backbone fits")
    if full:
        C.print_ratio("sam3_full_finetune_gib", min(r["peak_gb"] for r in full))


def eval_forward(model: Any, dev: torch.device, res: int, repeats: int = 2) -> tuple[float, float]:
    """Seconds and peak GiB of one no-grad bf16 forward of 1 image x 4 queries (after one
    untimed call)."""
    from sam_hf.models.sam3 import index_vision_outputs

    cuda = dev.type == "cuda"
    pixels = torch.randn(1, 3, res, res, device=dev)
    ids = torch.randint(1, 49000, (4, 32), device=dev)
    mask = torch.ones(4, 32, dtype=torch.long, device=dev)
    model.eval()
    best = float("inf")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
        for i in range(repeats + 1):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            vision = model.get_vision_features(pixel_values=pixels)
            index = torch.zeros(4, dtype=torch.long, device=dev)
            out = model(
                vision_embeds=index_vision_outputs(vision, index),
                input_ids=ids,
                attention_mask=mask,
            )
            if cuda:
                torch.cuda.synchronize()
            if i:
                best = min(best, time.perf_counter() - t)
    want = res // 14 * 4
    if tuple(out.pred_masks.shape[-2:]) != (want, want):
        raise RuntimeError(f"{res} px: pred_masks {tuple(out.pred_masks.shape)}, expected {want}")
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return best, peak


def resolution_section(b: dict[str, Any], steps: int) -> None:
    from sam_hf.models.sam3 import set_sam3_resolution

    print("\n== resolution: SAM3 full fine-tune (bf16 + checkpointing) per input size", flush=True)
    dev = b["dev"]
    for res in b["resolutions"]:

        def build(res: int = res) -> Any:
            model = b["sam3_at"](res)
            set_sam3_resolution(model, None, res)
            return model

        r = G.run(f"sam3@{res}", build, lambda m, d, res=res: G.sam3_step_fn(m, d, res),
                  "bf16+ckpt", steps, dev)  # fmt: skip
        with torch.device(dev):
            model = build()
        sec, peak = eval_forward(model, dev, res)
        cuda = dev.type == "cuda"
        train_peak = f"{r['peak_gb']:.2f} GiB" if cuda else "n/a (CPU)"
        shown = f"{peak:.2f} GiB" if cuda else "n/a (CPU)"
        print(
            f"sam3@{res}: train step {r['step_s']:.3f} s, peak {train_peak} | eval "
            f"forward {sec:.3f} s, peak {shown}",
            flush=True,
        )
        del model
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def in_process(module: str, argv: list[str]) -> None:
    """Run ``benchmarks/<module>.py``'s ``main(argv)`` here (one process, one CUDA context)."""
    print(f"\n== {module} {' '.join(argv)}", flush=True)
    mod = importlib.import_module(module)
    mod.main(argv)


def cache_section(smoke: bool, dev: torch.device) -> None:
    if smoke:
        in_process(
            "cache_speedup",
            ["--arch", "test", "--resolution", "64", "--num-images", "3", "--rounds", "1",
             "--sweep", "--image-size", "96", "128"],
        )  # fmt: skip
        in_process(
            "cache_speedup_sam3",
            ["--arch", "test", "--resolution", "56", "--num-images", "2", "--rounds", "1",
             "--image-size", "96", "128"],
        )  # fmt: skip
        return
    d = str(dev)
    in_process(
        "cache_speedup",
        ["--arch", "large", "--resolution", "1024", "--num-images", "8", "--rounds", "2",
         "--sweep", "--device", d],
    )  # fmt: skip
    in_process(
        "cache_speedup_sam3",
        ["--resolution", "1008", "--num-images", "4", "--rounds", "2", "--device", d],
    )  # fmt: skip


def peer_section(smoke: bool, dev: torch.device) -> None:
    if importlib.util.find_spec("training") is None or importlib.util.find_spec("sam2") is None:
        print(
            "\n== peer_sam2: skipped (the official `sam2` package with its `training` module is "
            "not importable in this Python; run the suite with the [official] venv's python)"
        )
        return
    if smoke:
        in_process(
            "peer_sam2",
            ["--resolution", "128", "--objects", "2", "--clicks", "1", "--rounds", "1"],
        )
    else:
        in_process(
            "peer_sam2",
            ["--resolution", "1024", "--objects", "8", "--rounds", "3", "--device", str(dev)],
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    ap.add_argument("--steps", type=int, default=3, help="AdamW steps per option (1 warm-up)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    C.add_common_args(ap)
    args = ap.parse_args(argv)
    C.quiet_libraries()
    if args.smoke:
        C.set_threads(args.threads)
        steps = 2
        print("smoke run: tiny random models on the CPU (no memory numbers)")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_suite.py needs a CUDA GPU (or --smoke for a CPU check).")
        steps = args.steps
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    C.print_machine()
    bnb = G.has_bitsandbytes()
    if not bnb:
        print("bitsandbytes is not installed: the 8-bit AdamW options are left out")
    b = builders(args.smoke)
    start = time.perf_counter()
    sections: dict[str, Callable[[], Any]] = {
        "memory": lambda: memory_verdicts(memory_section(b, steps, bnb), args.smoke),
        "resolution": lambda: resolution_section(b, steps),
        "cache": lambda: cache_section(args.smoke, b["dev"]),
        "peer": lambda: peer_section(args.smoke, b["dev"]),
    }
    for name in SECTIONS:
        if name in args.sections:
            t = time.perf_counter()
            sections[name]()
            print(f"[{name}: {time.perf_counter() - t:.0f} s]", flush=True)
    print(f"\ngpu_suite done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
