"""A small, fast stand-in model family for testing the shared trainer's loop mechanics.

It follows the same contracts as the SAM tasks (seeded per-sample randomness, forward -> loss,
predict -> masks) with a 3-layer conv net, so resume, accumulation and the non-finite guard can
be tested in seconds. The SAM2 recipe has its own end-to-end tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from sam_hf.config import Sam2Config, parse_args
from sam_hf.data.transforms import sample_seed


def toy_config(out: Path, *extra: str) -> Sam2Config:
    """A trainer config for the toy task writing to ``out``; ``extra`` flags override."""
    return parse_args(
        Sam2Config,
        [
            "--output_dir",
            str(out),
            "--per_device_train_batch_size",
            "2",
            "--num_train_epochs",
            "2",
            "--logging_steps",
            "1",
            "--save_total_limit",
            "10",
            "--metric_for_best_model",
            "mean_iou",
            *extra,
        ],
    )


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


class ToyDataset(Dataset):
    def __init__(self, n: int, seed: int, train: bool, size: int = 16) -> None:
        self.n, self.seed, self.train, self.size, self.epoch = n, seed, train, size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        base = torch.Generator().manual_seed(1000 + i)  # the fixed content of image i
        img = torch.rand(3, self.size, self.size, generator=base)
        mask = img[0] > 0.5
        aug = torch.Generator().manual_seed(
            sample_seed(self.seed, self.epoch if self.train else 0, i)
        )
        img = img + 0.05 * torch.randn(img.shape, generator=aug)  # seeded "augmentation"
        return {"pixel_values": img, "mask": mask, "image_id": f"img{i}"}


def collate(samples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "image_ids": [s["image_id"] for s in samples],
        "num_images": len(samples),
    }


class ToyModule(nn.Module):
    """conv(3 -> width), GroupNorm, ReLU, ``middle`` x [conv(width -> width), ReLU], conv(-> 1).

    The default (width 8, no middle conv) keeps every tensor small; ``width=32, middle=1`` has
    one 9,216-weight tensor, large enough for bitsandbytes to quantize its optimizer state.
    """

    def __init__(self, nan_ids: set[str] | None = None, width: int = 8, middle: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, width, 3, padding=1),
            nn.GroupNorm(max(2, width // 8), width),
            nn.ReLU(),
        ]
        for _ in range(middle):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        self.model = nn.Sequential(*layers, nn.Conv2d(width, 1, 3, padding=1))
        self.nan_ids = nan_ids or set()

    def forward(self, batch: dict) -> dict:
        logits = self.model(batch["pixel_values"])[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, batch["mask"].float())
        if self.nan_ids & set(batch["image_ids"]):
            loss = loss * float("nan")
        return {"loss": loss, "terms": {"bce": loss.detach()}}

    @torch.no_grad()
    def predict(self, batch: dict) -> list[dict]:
        logits = self.model(batch["pixel_values"])[:, 0]
        return [
            {"image_id": i, "pred": (lg > 0), "gt": m}
            for i, lg, m in zip(batch["image_ids"], logits, batch["mask"])
        ]


class ToyTask:
    family = "sam2"  # the model card written into final/ and best/ is a SAM2 card

    def __init__(
        self,
        n_train: int = 12,
        n_eval: int = 5,
        nan_ids: set[str] | None = None,
        **module_kw: int,
    ) -> None:
        self.n_train, self.n_eval, self.nan_ids = n_train, n_eval, nan_ids
        self.module_kw = module_kw

    def prepare_data(self, cfg: Any) -> None:
        pass

    def build_model(self, cfg: Any) -> tuple[nn.Module, Any]:
        torch.manual_seed(cfg.seed)
        module = ToyModule(self.nan_ids, **self.module_kw)
        if cfg.init_from:
            self.load_weights(module, cfg.init_from)
        return module, None

    def build_datasets(self, cfg: Any, processor: Any) -> tuple[Dataset, Dataset]:
        return ToyDataset(self.n_train, cfg.seed, True), ToyDataset(self.n_eval, cfg.seed, False)

    def collator(self, cfg: Any, train: bool) -> Any:
        return collate

    def eval_records(self, predictions: list[dict]) -> list[dict]:
        out = []
        for p in predictions:
            inter = (p["pred"] & p["gt"]).sum().item()
            union = (p["pred"] | p["gt"]).sum().item()
            out.append({"image_id": p["image_id"], "iou": inter / union if union else 1.0})
        return out

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        return {
            "mean_iou": sum(r["iou"] for r in records) / len(records),
            "num_images": len(records),
            "image_ids": sorted(r["image_id"] for r in records),
        }

    def overlay_items(self, samples: list, preds: list, processor: Any, cfg: Any) -> list[dict]:
        return [
            {
                "image": (s["pixel_values"].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy(),
                "pred_masks": p["pred"][None].numpy(),
                "gt_masks": p["gt"][None].numpy(),
            }
            for s, p in zip(samples, preds)
        ]

    def save_pretrained(self, module: nn.Module, processor: Any, out_dir: Path, cfg: Any) -> None:
        from safetensors.torch import save_file

        save_file(module.model.state_dict(), str(out_dir / "model.safetensors"))

    def load_weights(self, module: nn.Module, path: str) -> None:
        from safetensors.torch import load_file

        module.model.load_state_dict(load_file(str(Path(path) / "model.safetensors")))


def launch_toy(out: Path, *extra: str, sleep_s: float = 0.0) -> subprocess.Popen:
    """tests/toy_task.py as a training process (through the recipes' cli), 24 steps; the
    kill/signal-and-resume tests start it (``sleep_s`` slows each step so a signal lands mid-run)."""
    args = [
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "0.05",
        "--max_steps",
        "24",
        "--save_total_limit",
        "3",
        "--lr_scheduler_type",
        "cosine",
        "--warmup_steps",
        "3",
        "--logging_steps",
        "1",
        "--eval_on_start",
        "false",
        *extra,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": f"{Path(__file__).resolve().parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "TOY_STEP_SLEEP_S": str(sleep_s),
    }
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


if __name__ == "__main__":  # used by the kill-and-resume tests as a training subprocess
    # TOY_STEP_SLEEP_S slows every training forward down, so a test can signal mid-run.
    import os
    import time

    from sam_hf.recipe import cli
    from sam_hf.training.loop import train

    sleep_s = float(os.environ.get("TOY_STEP_SLEEP_S", "0"))
    if sleep_s:
        _forward = ToyModule.forward

        def slow_forward(self: ToyModule, batch: dict) -> dict:
            time.sleep(sleep_s)
            return _forward(self, batch)

        ToyModule.forward = slow_forward  # type: ignore[method-assign]

    cli(lambda: train(parse_args(Sam2Config, sys.argv[1:]), ToyTask()))
