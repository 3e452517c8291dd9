"""Shared test set-up: the recipe scripts on the import path, session-wide factories for the
synthetic data and tiny models that several test files build, and a clean Accelerate state.

Factories (lerobot's pattern) build each distinct artefact once per session and hand every
test its path; tests that modify what they get must copy it first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from sam_hf.config import Sam3Config, load_config
from sam_hf.data.synthetic.orchard import make_synthetic_orchard
from sam_hf.models.sam3 import build_sam3

ROOT = Path(__file__).resolve().parents[1]
# `import sam2_mineapple` / `import sam3_coco_text`: tests run the recipes' own main().
sys.path.insert(0, str(ROOT / "recipes"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-official",
        action="store_true",
        help="An `official` test that skips (e.g. sam2/sam3 not importable) fails instead.",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under --require-official a skipped parity test is a failure: CI must not pass with
    the comparison against Meta's code silently switched off."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and item.config.getoption("--require-official")
        and item.get_closest_marker("official") is not None
    ):
        report.outcome = "failed"
        report.longrepr = f"official test skipped under --require-official: {report.longrepr}"


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    """Accelerate keeps one process-wide state (device, mixed precision): every test starts
    and ends without one, so a bf16 run cannot leak into the next test."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def orchard(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``orchard(num_images, seed, image_size)`` -> a raw synthetic orchard folder (MinneApple
    layout + ``coco_text/``), generated once per distinct argument set."""
    made: dict[tuple, Path] = {}

    def make(num_images: int, seed: int, image_size: tuple[int, int]) -> Path:
        key = (num_images, seed, tuple(image_size))
        if key not in made:
            out = tmp_path_factory.mktemp("orchard") / "raw"
            make_synthetic_orchard(out, num_images=num_images, seed=seed, image_size=image_size)
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def confident_sam3(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``confident_sam3(seed, resolution)`` -> a saved tiny SAM3 whose presence head is pushed
    up (+8 on its last bias), so a useful share of predictions pass the 0.5 score cut that
    evaluation and prediction apply; random tiny weights alone score near 0."""
    made: dict[tuple, Path] = {}

    def make(seed: int, resolution: int) -> Path:
        if (seed, resolution) not in made:
            out = tmp_path_factory.mktemp("sam3") / "model"
            cfg = load_config(
                Sam3Config,
                None,
                {"model_name_or_path": "sam3-tiny", "resolution": resolution, "seed": seed},
            )
            model, processor = build_sam3(cfg)
            with torch.no_grad():
                model.detr_decoder.presence_head.layer3.bias.add_(8.0)
            model.save_pretrained(str(out))
            processor.save_pretrained(str(out))
            made[(seed, resolution)] = out
        return made[(seed, resolution)]

    return make
