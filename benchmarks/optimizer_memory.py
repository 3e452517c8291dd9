"""Optimizer-state memory of AdamW against bitsandbytes' 8-bit AdamW, counted from real tensors.

``optim: adamw_bnb_8bit`` is the trainer's memory saver for full fine-tunes: AdamW keeps two
fp32 moments per parameter (8 bytes), the 8-bit variant one byte per moment plus an fp32
scale per 256-element block for every tensor of >= 4096 elements (smaller tensors keep fp32
moments). This script measures what that comes to on real model shapes instead of trusting
the formula: it builds full-size models with random weights on the CPU, sets every trainable
parameter's ``.grad`` to random values, takes one step with each optimizer -- both built by
``sam_hf.training.optim.build_optimizer``, exactly as the trainer builds them -- and adds up the
bytes of the tensors each optimizer then holds in its state (a storage shared by several
entries, like bitsandbytes' quantization maps, counted once), of the weights and of the grads.

Models (``--models``, default both): the sam2.1-hiera-tiny architecture (config from
``benchmarks/cache_speedup.py``) and sam2.1-hiera-large (the configuration of
``benchmarks/gpu_memory.py``), each a ``transformers.Sam2Model`` at 1024 px, full
fine-tune (every parameter trainable). ``--sam3`` also measures SAM3 (``Sam3Config()``,
~840M parameters): too large to hold with grads and AdamW state in this machine's memory,
it is measured in chunks -- the exact parameter shapes are read from a meta-device build,
then groups of at most 64M elements are materialised, stepped with each optimizer and
counted, and the counts summed (optimizer state is per tensor, so the sum is the model's).

Then, labelled as arithmetic (NOT a GPU measurement), what the measured bytes per parameter
imply for SAM3's weights + grads + optimizer state, next to the H100 measurement in
``benchmarks/results/gpu_memory_h100.txt`` (bf16 autocast + activation checkpointing, full
fine-tune, AdamW: peak 17.83 GiB; that file writes GB for bytes / 2**30).

    python benchmarks/optimizer_memory.py [--models tiny large] [--sam3] [--threads 1]

Last line: ``RATIO optimizer_memory <AdamW state bytes / AdamW8bit state bytes>`` of the
last (largest) model measured. About 40 s and 4 GiB of RAM by default; ``--sam3`` adds
about a minute.
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import _common as C
import torch
from torch import nn

#: SAM3's measured H100 peak, bf16 autocast + activation checkpointing, full fine-tune with
#: AdamW, in GiB (benchmarks/results/gpu_memory_h100.txt, which divides bytes by 2**30).
GPU_PEAK_SAM3_ADAMW_GIB = 17.83
#: bitsandbytes keeps state of tensors below this many elements (its default) in fp32.
MIN_8BIT_SIZE = 4096
#: The most elements materialised at once when SAM3 is measured in chunks.
CHUNK_ELEMENTS = 64 * 2**20

ARMS = ("adamw_torch", "adamw_bnb_8bit")


@dataclass
class Measured:
    """Bytes counted for one model (summed over chunks when measured in chunks)."""

    name: str
    params: int = 0
    params_in_small_tensors: int = 0
    weight_bytes: int = 0
    grad_bytes: int = 0
    adamw_torch_state: int = 0
    adamw_bnb_8bit_state: int = 0
    adamw_torch_step_s: float = 0.0
    adamw_bnb_8bit_step_s: float = 0.0

    def add(self, other: Measured) -> None:
        for k, v in vars(other).items():
            if k != "name":
                setattr(self, k, getattr(self, k) + v)


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared ones counted once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def state_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    """Every tensor an optimizer holds in its per-parameter state."""
    for state in optimizer.state.values():
        yield from (v for v in state.values() if torch.is_tensor(v))


def measure_params(name: str, module: nn.Module, seed: int) -> Measured:
    """Random grads on every trainable parameter of ``module``, one step of each optimizer."""
    params = [p for p in module.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    m = Measured(
        name,
        params=sum(p.numel() for p in params),
        params_in_small_tensors=sum(p.numel() for p in params if p.numel() < MIN_8BIT_SIZE),
        weight_bytes=unique_bytes(params),
        grad_bytes=unique_bytes(p.grad for p in params),
    )
    for kind in ARMS:
        optimizer = C.trainer_optimizer(module, kind)
        start = time.perf_counter()
        optimizer.step()
        setattr(m, f"{kind}_step_s", time.perf_counter() - start)
        setattr(m, f"{kind}_state", unique_bytes(state_tensors(optimizer)))
        del optimizer
        gc.collect()
    for p in params:
        p.grad = None
    return m


def build_sam2(which: str) -> nn.Module:
    """A full-size ``Sam2Model`` at 1024 px with random weights (seeded)."""
    from cache_speedup import hiera_tiny_config
    from transformers import Sam2Model

    config = hiera_tiny_config(1024) if which == "tiny" else C.sam2_large_config(1024)
    torch.manual_seed(0)
    return Sam2Model(config).train()


def measure_sam3_in_chunks() -> Measured:
    """SAM3's exact parameter shapes, materialised and measured a chunk at a time."""
    from transformers import Sam3Config, Sam3Model

    with torch.device("meta"):
        shapes = [p.shape for p in Sam3Model(Sam3Config()).parameters()]
    total = Measured("sam3")
    chunk: list[torch.Size] = []

    def flush(index: int) -> None:
        gen = torch.Generator().manual_seed(index)
        module = nn.ParameterList(
            nn.Parameter(torch.randn(shape, generator=gen) * 0.02) for shape in chunk
        )
        total.add(measure_params("sam3", module, seed=index))
        chunk.clear()
        gc.collect()

    size, index = 0, 0
    for shape in shapes:
        n = shape.numel()
        if chunk and size + n > CHUNK_ELEMENTS:
            flush(index)
            size, index = 0, index + 1
        chunk.append(shape)
        size += n
    if chunk:
        flush(index)
    return total


def report(m: Measured) -> None:
    n = m.params
    small = m.params_in_small_tensors
    print(f"\n{m.name}: {n:,} trainable parameters ({small / n:.2%} in tensors < {MIN_8BIT_SIZE})")
    for label, value in (("weights", m.weight_bytes), ("grads", m.grad_bytes)):
        print(f"  {label:<21s} {value / 2**20:9.1f} MiB  {value / n:.4f} bytes/param")
    for kind, label in (("adamw_torch", "AdamW state"), ("adamw_bnb_8bit", "AdamW8bit state")):
        value, seconds = getattr(m, f"{kind}_state"), getattr(m, f"{kind}_step_s")
        print(
            f"  {label:<21s} {value / 2**20:9.1f} MiB  {value / n:.4f} bytes/param"
            f"  (one step on this CPU: {seconds:.2f} s)"
        )
    print(f"  AdamW state / AdamW8bit state: {m.adamw_torch_state / m.adamw_bnb_8bit_state:.4f}")


def implied_for_sam3(basis: Measured, sam3_params: int) -> None:
    """Arithmetic only: measured bytes/param of ``basis`` times SAM3's parameter count."""
    gib = 2**30
    per = {
        "weights (fp32)": basis.weight_bytes / basis.params,
        "grads (fp32)": basis.grad_bytes / basis.params,
        "AdamW state": basis.adamw_torch_state / basis.params,
        "AdamW8bit state": basis.adamw_bnb_8bit_state / basis.params,
    }
    print(
        f"\nSAM3 ({sam3_params:,} parameters, full fine-tune) x the bytes/param measured above "
        f"on {basis.name} -- ARITHMETIC, NOT A GPU MEASUREMENT:"
    )
    for label, b in per.items():
        print(f"  {label:<21s} {b:.4f} bytes/param -> {sam3_params * b / gib:6.2f} GiB")
    base = per["weights (fp32)"] + per["grads (fp32)"]
    with_adamw = sam3_params * (base + per["AdamW state"]) / gib
    with_8bit = sam3_params * (base + per["AdamW8bit state"]) / gib
    saved = with_adamw - with_8bit
    print(f"  weights + grads + AdamW state      {with_adamw:6.2f} GiB")
    print(f"  weights + grads + AdamW8bit state  {with_8bit:6.2f} GiB  ({saved:.2f} GiB less)")
    print(
        f"  H100 measured peak, bf16 + checkpointing, AdamW: {GPU_PEAK_SAM3_ADAMW_GIB:.2f} GiB "
        "(benchmarks/results/gpu_memory_h100.txt)\n"
        f"  -> with AdamW8bit, if all else at the peak stayed the same: "
        f"~{GPU_PEAK_SAM3_ADAMW_GIB - saved:.2f} GiB\n"
        "  (an estimate until benchmarks/gpu_memory.py measures it on a GPU: torch's CUDA AdamW\n"
        "  also allocates foreach temporaries during its step that bitsandbytes' fused kernel\n"
        "  does not, so the peak may move by a different amount)"
    )


def sam3_parameter_count() -> int:
    """SAM3's parameter count from its config, built on the meta device (no memory, ~3 s)."""
    from transformers import Sam3Config, Sam3Model

    with torch.device("meta"):
        return sum(p.numel() for p in Sam3Model(Sam3Config()).parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        choices=["tiny", "large"],
        default=["tiny", "large"],
        help="sam2.1-hiera models to build and measure whole",
    )
    parser.add_argument("--sam3", action="store_true", help="also measure SAM3, in chunks")
    C.add_common_args(parser)
    args = parser.parse_args()
    C.set_threads(args.threads)
    C.quiet_libraries()
    # bitsandbytes' CPU backend warns at import about an optional 4-bit matmul kernel
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import bitsandbytes

    C.print_machine()
    print(
        f"bitsandbytes {bitsandbytes.__version__}; optimizers from sam_hf.training.optim.build_optimizer"
    )

    results = []
    for which in args.models:
        name = f"sam2.1-hiera-{which}"
        model = build_sam2(which)
        results.append(measure_params(name, model, seed=0))
        del model
        gc.collect()
        report(results[-1])
    if args.sam3:
        results.append(measure_sam3_in_chunks())
        report(results[-1])
        sam3_params = results[-1].params
    else:
        sam3_params = sam3_parameter_count()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak resident memory of this process: {peak_rss:.2f} GiB")

    implied_for_sam3(results[-1], sam3_params)
    last = results[-1]
    C.print_ratio("optimizer_memory", last.adamw_torch_state / last.adamw_bnb_8bit_state)


if __name__ == "__main__":
    main()
