"""Helpers shared by the benchmark scripts: side-by-side timing, the RATIO line, tiny builders.

Every benchmark compares two *arms* (e.g. the trainer's step and a bare loop) in one process.
The machine these numbers come from is often shared (other jobs, a 2-core box), so a single
timing of each arm is worthless: load drifts by a factor of two within seconds. The helpers
therefore run the arms in interleaved blocks, alternate which arm goes first in each round
(so neither always inherits the other's cache state), and summarise with medians of *paired*
ratios -- the two blocks of a pair ran seconds apart, so slow drift cancels out of the ratio.

Each script prints readable lines (configuration, machine, each arm's timings) and, as its
last line, ``RATIO <name> <value>``, which ``run_all.py`` collects.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: Repository root (benchmarks/ lives directly under it).
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` without `pip install -e .`
    sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- machine


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--threads`` (torch/OpenCV intra-op threads) for every benchmark."""
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch (and OpenCV) intra-op threads; 0 keeps the library defaults. Default 1: on "
        "a shared 2-core box, OpenMP spin-waiting makes 2-thread timings swing by 2-5x.",
    )


def set_threads(threads: int) -> None:
    """Pin torch's and OpenCV's thread pools (0 = leave their defaults)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
        try:
            import cv2

            cv2.setNumThreads(threads)
        except ImportError:
            pass


def machine_lines() -> list[str]:
    """What the numbers were measured on: CPU count, threads, load, library versions."""
    import torch

    lines = [
        f"machine: {platform.machine()} {platform.processor() or ''}".rstrip()
        + f", {os.cpu_count()} CPUs, python {platform.python_version()}",
        f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads, "
        f"CUDA {'available' if torch.cuda.is_available() else 'not used'}",
    ]
    try:
        import cv2

        lines.append(f"opencv {cv2.__version__}: {cv2.getNumThreads()} threads")
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        one, five, fifteen = os.getloadavg()
        lines.append(f"load average (1/5/15 min): {one:.2f} {five:.2f} {fifteen:.2f}")
    return lines


def print_machine() -> None:
    for line in machine_lines():
        print(line)


def quiet_libraries() -> None:
    """Silence progress bars and info logs so the output is the benchmark's own lines."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    for name in ("accelerate", "sam_hf", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ------------------------------------------------------------------------------ timing


class Timings:
    """Wall-clock and process-CPU seconds of repeated measurements of one arm.

    Both clocks are kept because they fail differently on a shared machine: wall time also
    counts the moments the OS gave our core to another job, process CPU time counts only
    the work this process did (all its threads, so it suits single-threaded arms; worker
    processes and I/O waits are not in it).
    """

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        w, c = time.perf_counter(), time.process_time()
        yield
        self.wall.append(time.perf_counter() - w)
        self.cpu.append(time.process_time() - c)

    def get(self, clock: str) -> list[float]:
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
        return self.wall if clock == "wall" else self.cpu

    def after(self, n: int) -> Timings:
        """The same timings without the first ``n`` (warm-up) measurements."""
        out = Timings()
        out.wall, out.cpu = self.wall[n:], self.cpu[n:]
        return out


def interleave(
    arms: Sequence[tuple[str, Callable[[], Any]]],
    rounds: int,
    warmup_rounds: int = 1,
    budget_s: float | None = None,
) -> dict[str, Timings]:
    """Time each arm's block ``rounds`` times, arms interleaved; returns seconds per block.

    Round ``r`` runs the arms in the given order when ``r`` is even and reversed when odd.
    The first ``warmup_rounds`` rounds run the same way but are not recorded (allocator,
    caches, lazy imports and one-off initialisation land there). With ``budget_s``, no new
    timed round starts once the timed rounds have taken that long (at least one runs).
    """
    times = {name: Timings() for name, _ in arms}
    start = None
    for r in range(warmup_rounds + rounds):
        if r >= warmup_rounds:
            if start is None:
                start = time.perf_counter()
            elif budget_s is not None and time.perf_counter() - start >= budget_s:
                break
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name, block in order:
            if r < warmup_rounds:
                block()
                continue
            with times[name].measure():
                block()
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """``num[i] / den[i]`` for measurements that ran side by side."""
    if len(num) != len(den) or not num:
        raise ValueError("paired_ratios needs two equally long, non-empty lists")
    return [a / b for a, b in zip(num, den)]


def median_ci(
    xs: Sequence[float], level: float = 0.95, resamples: int = 2000
) -> tuple[float, float]:
    """Bootstrap percentile interval of the median (seeded, so a rerun prints the same)."""
    rng = random.Random(0)
    n = len(xs)
    meds = sorted(statistics.median(rng.choices(xs, k=n)) for _ in range(resamples))
    lo = meds[int((1 - level) / 2 * resamples)]
    hi = meds[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return float(lo), float(hi)


def interval(xs: Sequence[float]) -> str:
    """``95% bootstrap CI a-b; `` for 3+ values, nothing for fewer (no meaningful interval)."""
    if len(xs) < 3:
        return ""
    lo, hi = median_ci(xs)
    return f"95% bootstrap CI {lo:.4g}-{hi:.4g}; "


def describe(xs: Sequence[float], unit: str = "s", scale: float = 1.0) -> str:
    """``median 1.234 s (min 1.1, max 1.5, n=8)``."""
    v = [x * scale for x in xs]
    return f"median {median(v):.4g} {unit} (min {min(v):.4g}, max {max(v):.4g}, n={len(v)})"


def compare(
    num_name: str,
    num: Timings,
    den_name: str,
    den: Timings,
    unit: str = "ms",
    scale: float = 1e3,
) -> dict[str, float]:
    """Print both arms under both clocks; return the median paired ratio num/den per clock."""
    out = {}
    width = max(len(num_name), len(den_name))
    for clock in ("cpu", "wall"):
        a, b = num.get(clock), den.get(clock)
        ratios = paired_ratios(a, b)
        out[clock] = median(ratios)
        print(f"[{clock} time] {num_name:<{width}}  {describe(a, unit, scale)}")
        print(f"[{clock} time] {den_name:<{width}}  {describe(b, unit, scale)}")
        print(
            f"[{clock} time] {num_name}/{den_name}: median of paired ratios {out[clock]:.4f} "
            f"({interval(ratios)}min {min(ratios):.4f}, max {max(ratios):.4f}); "
            "ratio of medians "
            f"{median(a) / median(b):.4f}"
        )
    return out


def print_ratio(name: str, value: float) -> None:
    """The last line of every benchmark: ``RATIO <name> <value>``."""
    print(f"RATIO {name} {value:.4f}", flush=True)


# ------------------------------------------------------------------------------ builders


#: The demo scale used on the CPU: the tiny random SAM2 config at 256 px, fp32.
DEMO_OVERRIDES: dict[str, Any] = {
    "model_name_or_path": "sam2-tiny",
    "resolution": 256,
    "bf16": False,
    "report_to": ["none"],
}


def recipe_yaml() -> Path:
    """The SAM2 recipe's YAML: the CPU demo one when the repository has it."""
    demo = ROOT / "recipes" / "sam2_demo.yaml"
    return demo if demo.is_file() else ROOT / "recipes" / "sam2_mineapple.yaml"


def recipe_config(
    output_dir: str | os.PathLike[str], yaml: Path | None = None, **overrides: Any
) -> Any:
    """A recipe's resolved ``Sam2Config`` at demo scale (``DEMO_OVERRIDES`` + ``overrides``).

    ``yaml`` defaults to :func:`recipe_yaml`. Everything else (batch size, num_workers,
    prompts, objects per image, augmentation, loss weights, clipping) is what the recipe
    says, so the benchmark measures its settings. The YAML's path is kept on the config
    object as ``_yaml`` for :func:`describe_config`.
    """
    from sam_hf.config import Sam2Config, load_config

    path = yaml or recipe_yaml()
    values = {**DEMO_OVERRIDES, "output_dir": str(output_dir), **overrides}
    cfg = load_config(Sam2Config, path, values)
    cfg._yaml = path
    return cfg


def describe_config(cfg: Any, keys: Sequence[str]) -> str:
    """``config: recipes/x.yaml with key=value, ...`` (the values actually used)."""
    rel = Path(getattr(cfg, "_yaml", recipe_yaml())).relative_to(ROOT)
    return f"config: {rel} with " + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in keys)


def temp_dir(prefix: str) -> Path:
    """A fresh folder under the system temp dir (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=f"sam_hf_bench_{prefix}_"))


def synthetic_minneapple(
    root: Path, num_images: int, image_size: tuple[int, int], seed: int = 0, zoom: float = 1.0
) -> Path:
    """Write the synthetic orchard under ``root``; returns its MinneApple-layout folder.

    ``zoom`` 1 is the MinneApple scale; the CPU demo uses close-ups (``synthetic_zoom``).
    """
    from sam_hf.data.synthetic.orchard import make_synthetic_orchard

    make_synthetic_orchard(
        root / "raw", num_images=num_images, seed=seed, image_size=image_size, zoom=zoom
    )
    return root / "raw" / "minneapple"


def orchard_dataset(
    root: Path, num_images: int, image_size: tuple[int, int], seed: int = 0, zoom: float = 1.0
) -> Any:
    """Synthetic orchard -> ``convert_minneapple`` DatasetDict (train/test, no validation)."""
    from sam_hf.data.sources.minneapple import convert_minneapple

    source = synthetic_minneapple(root, num_images, image_size, seed, zoom)
    return convert_minneapple(source, val_fraction=0.0, seed=seed, cache_dir=root / "cache")


def segmentation_dataset(split: Any, cfg: Any, processor: Any) -> Any:
    """The training ``SegmentationDataset``, built as ``Sam2Task.build_datasets`` builds it."""
    from sam_hf.data.transforms import SegmentationDataset

    ip = processor.image_processor
    return SegmentationDataset(
        split,
        resolution=cfg.resolution,
        image_mean=ip.image_mean,
        image_std=ip.image_std,
        seed=cfg.seed,
        train=True,
        hflip_prob=cfg.hflip_prob,
        color_jitter=cfg.color_jitter,
    )


def precollate(dataset: Any, collator: Any, batch_size: int) -> list[dict[str, Any]]:
    """Every batch of one pass over ``dataset`` in order, collated once and kept in memory."""
    n = len(dataset)
    return [
        collator([dataset[j] for j in range(i, min(n, i + batch_size))])
        for i in range(0, n, batch_size)
    ]


def tiny_sam2(cfg: Any) -> tuple[Any, Any]:
    """``(Sam2ForTraining, processor)`` for ``cfg`` (the tiny random model at demo scale)."""
    from sam_hf.models.sam2 import build_sam2
    from sam_hf.models.sam2_training import Sam2ForTraining

    model, processor = build_sam2(cfg)
    return Sam2ForTraining(model, cfg), processor


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def full_size_sam2(cfg: Any) -> tuple[Any, Any]:
    """``(Sam2ForTraining, processor)`` of the full-size sam2.1-hiera-tiny architecture.

    transformers' default ``Sam2Config`` is the ``facebook/sam2.1-hiera-tiny`` architecture;
    weights are random (nothing can be downloaded here), which costs the same compute.
    """
    import torch
    from transformers import Sam2Config, Sam2Model

    from sam_hf.models.sam2 import (
        build_sam2_processor,
        set_sam2_resolution,
        tie_fourier_features,
    )
    from sam_hf.models.sam2_training import Sam2ForTraining

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        model = Sam2Model(set_sam2_resolution(Sam2Config(), cfg.resolution))
        tie_fourier_features(model)
    return Sam2ForTraining(model, cfg), build_sam2_processor(cfg.resolution)


#: sam2.1-hiera-large's Hiera backbone (the released checkpoint's config.json) and the
#: channel widths its FPN neck reads, for the full-size memory benchmarks.
HIERA_LARGE = {
    "model_type": "sam2_hiera_det_model",
    "hidden_size": 144,
    "num_attention_heads": 2,
    "blocks_per_stage": [2, 6, 36, 4],
    "embed_dim_per_stage": [144, 288, 576, 1152],
    "num_attention_heads_per_stage": [2, 4, 8, 16],
    "window_size_per_stage": [8, 4, 16, 8],
    "global_attention_blocks": [23, 33, 43],
    "window_positional_embedding_background_size": [7, 7],
}
HIERA_LARGE_CHANNELS = [1152, 576, 288, 144]


def sam2_large_config(resolution: int = 1024) -> Any:
    """A ``Sam2Config`` of the sam2.1-hiera-large architecture at ``resolution`` px."""
    from transformers import Sam2Config

    from sam_hf.models.sam2 import set_sam2_resolution

    vision = {
        "model_type": "sam2_vision_model",
        "backbone_config": HIERA_LARGE,
        "backbone_channel_list": HIERA_LARGE_CHANNELS,
    }
    return set_sam2_resolution(Sam2Config(vision_config=vision), resolution)


def trainer_optimizer(module: Any, kind: str = "adamw_torch") -> Any:
    """The trainer's own optimizer for ``module`` (``build_optimizer`` with the recipe
    defaults: weight-decay groups, frozen parameters left out) with ``optim: kind``."""
    from sam_hf.config import Sam2Config, parse_args
    from sam_hf.training.optim import build_optimizer

    out = Path(tempfile.gettempdir()) / "sam_hf_benchmark"
    cfg = parse_args(Sam2Config, ["--optim", kind, "--output_dir", str(out)])
    return build_optimizer(cfg, module)


def to_device(obj: Any, device: Any) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def efficiency(uncached: float, cached: float, encoder: float) -> tuple[float, float]:
    """``(ideal speedup, measured / ideal)`` of a cache that removes ``encoder`` seconds from
    an ``uncached`` epoch: ideal = uncached / (uncached - encoder), so the efficiency is
    (uncached - encoder) / cached -- 1 when the cached epoch costs exactly the uncached one
    minus its encoder time, below 1 when the cache adds costs of its own (reading features)."""
    rest = max(uncached - encoder, 1e-12)
    return uncached / rest, rest / cached


def train_step(module: Any, optimizer: Any, batch: dict[str, Any], max_grad_norm: float) -> float:
    """One bare training step: forward, backward, clip, optimizer step, zero_grad."""
    import torch

    out = module(batch)
    out["loss"].backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out["loss"].detach())
