"""The GPU benchmark suite runs end to end before GPU time is spent on it.

``benchmarks/gpu_suite.py --smoke`` runs every section's code path (the memory option ladder,
SAM3 at four input sizes, the cache benchmarks with their efficiency ratio, the peer
comparison when the official package is importable) on tiny random models on the CPU. It
takes ~30 s of CPU time (more on a loaded 2-core box), hence ``slow``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_smoke_prints_every_section() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    # memory: every rung of the ladder ran for both models (8-bit only with bitsandbytes)
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    base = "bf16+ckpt+8bit" if bnb else "bf16+ckpt"
    for option in ("fp32", "bf16", "bf16+ckpt", f"{base}+frozen_text+frozen_vision"):
        assert f"sam3-tiny  {option} " in out, option
    assert f"sam2-tiny  {base}+frozen_vision " in out
    # a frozen text encoder leaves fewer parameters trainable than the full fine-tune
    trainable = {
        line.split()[1]: float(line.split("trainable")[1].split()[0])
        for line in out.splitlines()
        if line.startswith("sam3-tiny ")
    }
    assert trainable[f"{base}+frozen_text"] < trainable["bf16+ckpt"]
    # resolution: the four sizes trained and evaluated
    for res in (112, 98, 84, 70):
        assert f"sam3@{res}: train step" in out, res
    # cache: both efficiency ratios, as finite numbers
    for name in ("cache_efficiency", "cache_efficiency_sam3"):
        (line,) = [ln for ln in out.splitlines() if ln.startswith(f"RATIO {name} ")]
        assert float(line.split()[2]) > 0
    # peer: run or said why not
    assert "peer_sam2" in out
    assert "gpu_suite done" in out
