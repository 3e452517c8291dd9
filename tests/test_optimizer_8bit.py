"""``optim: adamw_bnb_8bit``: bitsandbytes' 8-bit AdamW through the shared trainer.

Users pick it to cut AdamW's 8 bytes of state per parameter to about 2, so the tests check
what that choice promises: training still learns, the state really is 8-bit (measured from
the state tensors), a resumed run ends with the same weights as a straight one, and a machine
without bitsandbytes gets an error that says how to install it. bitsandbytes 0.50.2 (the
version tested) runs the 8-bit update on CPU too, so all of this runs here without a GPU.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from toy_task import ToyModule, ToyTask, final_weights, toy_config

from sam_hf.config import ConfigError
from sam_hf.training import optim
from sam_hf.training.loop import train
from sam_hf.training.optim import build_optimizer

#: bitsandbytes keeps tensors smaller than this (its ``min_8bit_size`` default) in fp32.
MIN_8BIT_SIZE = 4096


#: The toy net with one tensor large enough for 8-bit state (see ToyModule).
WIDE = {"width": 32, "middle": 1}


def cfg_for(out: Path, *extra: str):
    return toy_config(
        out,
        "--optim",
        "adamw_bnb_8bit",
        "--learning_rate",
        "0.01",
        "--lr_scheduler_type",
        "constant",
        *extra,
    )


def logged_losses(out: Path) -> list[float]:
    text = (out / "training.log").read_text()
    return [float(v) for v in re.findall(r"train/loss=([0-9.eE+-]+)", text)]


def state_bytes(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> int:
    """Bytes of the optimizer state held for ``p``. The quantization maps (``qmap*``) are one
    256-entry table shared by every parameter, so they are not charged to any one of them."""
    return sum(
        v.numel() * v.element_size()
        for k, v in optimizer.state[p].items()
        if torch.is_tensor(v) and not k.startswith("qmap")
    )


@pytest.fixture
def captured_optimizers(monkeypatch) -> list[torch.optim.Optimizer]:
    """Every optimizer ``train`` builds, kept so a test can inspect its state afterwards."""
    built: list[torch.optim.Optimizer] = []
    original = optim.build_optimizer

    def recording(cfg, module):
        opt = original(cfg, module)
        built.append(opt)
        return opt

    monkeypatch.setattr(optim, "build_optimizer", recording)
    return built


def test_adamw_8bit_trains_with_8bit_state(tmp_path, captured_optimizers):
    bnb = pytest.importorskip("bitsandbytes")
    out = tmp_path / "run"
    res = train(cfg_for(out), ToyTask(**WIDE))

    (opt,) = captured_optimizers
    assert isinstance(opt, bnb.optim.AdamW8bit)
    assert res["global_step"] == 12
    losses = logged_losses(out)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert res["eval_mean_iou"] > res["initial_eval_mean_iou"]

    params = [p for g in opt.param_groups for p in g["params"]]
    large = [p for p in params if p.numel() >= MIN_8BIT_SIZE]
    assert [tuple(p.shape) for p in large] == [(32, 32, 3, 3)]
    for p in large:
        st = opt.state[p]
        # both moments as one byte per element, plus one fp32 scale per 256-element block
        assert st["state1"].dtype == st["state2"].dtype == torch.uint8
        assert st["state1"].shape == st["state2"].shape == p.shape
        assert st["absmax1"].dtype == torch.float32
        assert st["absmax1"].numel() == st["absmax2"].numel() == -(-p.numel() // 256)
        per_param = state_bytes(opt, p) / p.numel()
        assert per_param < 2.1  # AdamW: 8.0 (two fp32 moments)
    # small tensors (biases, norms, the thin convs) keep fp32 moments, as in AdamW
    for p in params:
        if p.numel() < MIN_8BIT_SIZE:
            assert opt.state[p]["state1"].dtype == torch.float32
            assert state_bytes(opt, p) == 8 * p.numel()


def test_adamw_8bit_state_is_a_quarter_of_adamw(tmp_path, captured_optimizers):
    pytest.importorskip("bitsandbytes")
    train(cfg_for(tmp_path / "a8", "--max_steps", "2", "--eval_on_start", "false"), ToyTask(**WIDE))
    train(
        cfg_for(
            tmp_path / "a32",
            "--max_steps",
            "2",
            "--eval_on_start",
            "false",
            "--optim",
            "adamw_torch",
        ),
        ToyTask(**WIDE),
    )
    opt8, opt32 = captured_optimizers
    (big8,) = [p for g in opt8.param_groups for p in g["params"] if p.numel() >= MIN_8BIT_SIZE]
    (big32,) = [p for g in opt32.param_groups for p in g["params"] if p.numel() >= MIN_8BIT_SIZE]
    ratio = state_bytes(opt32, big32) / state_bytes(opt8, big8)
    # AdamW: 2 x 4 bytes + a 4-byte step counter; 8-bit: 2 x 1 byte + 2 x 4 bytes per 256
    assert state_bytes(opt32, big32) == 8 * big32.numel() + 4
    assert 3.8 < ratio < 4.0, ratio


def test_adamw_8bit_resume_equals_straight_run(tmp_path):
    """9 steps straight == 4 steps, a stop, and 5 resumed steps: same weights, bit for bit.

    The 8-bit moments and their block scales go through the checkpoint, so anything lost or
    re-quantized on save/load would show up as a weight difference here.
    """
    pytest.importorskip("bitsandbytes")
    train(cfg_for(tmp_path / "a", "--max_steps", "9"), ToyTask(**WIDE))
    train(
        cfg_for(
            tmp_path / "b", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "4"
        ),
        ToyTask(**WIDE),
    )
    resumed = train(
        cfg_for(tmp_path / "b", "--max_steps", "9", "--resume_from_checkpoint", "true"),
        ToyTask(**WIDE),
    )
    assert resumed["global_step"] == 9
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:  # the same run, resumed from its own checkpoint: bitwise
        assert torch.equal(a[k], b[k]), f"{k} differs"
    # the checkpoint it resumed from holds the 8-bit moments, not fp32 copies of them
    # (bitsandbytes nests each parameter's tensors under one key of its own)
    saved = torch.load(tmp_path / "b" / "checkpoint-4" / "optimizer.bin")
    states = [st["__bnb_optimizer_quant_state__"] for st in saved["state"].values()]
    dtypes = [st["state1"].dtype for st in states]
    assert dtypes.count(torch.uint8) == 1  # the one large tensor
    assert dtypes.count(torch.float32) == len(dtypes) - 1


def test_missing_bitsandbytes_says_how_to_install(tmp_path, monkeypatch):
    # a None entry in sys.modules makes `import bitsandbytes` raise ImportError
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    cfg = cfg_for(tmp_path / "x")
    with pytest.raises(ConfigError, match=r"adamw_bnb_8bit needs bitsandbytes.*pip install"):
        build_optimizer(cfg, ToyModule(**WIDE))
