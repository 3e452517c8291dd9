"""The pieces that build the demo checkpoints: named small configs, shapes-2 data, the
time-budgeted build script."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sam_hf.config import parse_args
from sam_hf.config.args import CONFIG_CLASSES
from sam_hf.config.errors import ConfigError
from sam_hf.data.synthetic import shapes
from sam_hf.models import sam2 as m2
from sam_hf.models import sam3 as m3
from sam_hf.models import sam3_tracker as mt
from tests.scripts_loader import load_script

#: The shipped-checkpoint limit of the demo issue: about 10 MB of float32 weights.
MAX_WEIGHT_BYTES = 12_000_000


@pytest.mark.parametrize("name", m2.TINY_NAMES)
def test_small_sam2_configs_build_predict_and_fit_the_size_limit(name: str) -> None:
    cfg = SimpleNamespace(
        model_name_or_path=name, model_type=None, revision="main", resolution=128, seed=0,
        freeze_image_encoder=False, freeze_prompt_encoder=False, freeze_mask_decoder=False,
    )  # fmt: skip
    model, processor = m2.build_sam2(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 4 * n <= MAX_WEIGHT_BYTES
    assert processor.image_processor.size == {"height": 128, "width": 128}
    with torch.no_grad():
        out = model(
            pixel_values=torch.randn(1, 3, 128, 128),
            input_points=torch.tensor([[[[64.0, 64.0]]]]),
            input_labels=torch.ones(1, 1, 1, dtype=torch.long),
        )
    assert out.pred_masks.shape[-2:] == (32, 32) and torch.isfinite(out.pred_masks).all()


def test_sam2_widths_grow_with_the_name() -> None:
    sizes = [
        sum(p.numel() for p in m2.Sam2Model(m2.tiny_sam2_config(128, n)).parameters())
        for n in ("sam2-tiny", "sam2-mini", "sam2-mini-wide")
    ]
    assert sizes == sorted(sizes) and sizes[0] < 400_000 < 2_000_000 < sizes[2]


@pytest.mark.parametrize("name", m3.TINY_NAMES)
def test_small_sam3_configs_build_and_fit_the_size_limit(name: str) -> None:
    cfg = SimpleNamespace(
        model_name_or_path=name, revision="main", resolution=56, seed=0, freeze_tracker=True,
        freeze_vision_encoder=False, freeze_text_encoder=False, gradient_checkpointing=False,
    )  # fmt: skip
    model, _ = m3.build_sam3(cfg)
    assert 4 * sum(p.numel() for p in model.parameters()) <= MAX_WEIGHT_BYTES
    assert model.config.vision_config.backbone_config.image_size == 56


def test_sam3_tiny_is_unchanged_by_the_named_configs() -> None:
    """Tests and the shipped tiny checkpoint rely on sam3-tiny's exact shape."""
    c = m3.tiny_sam3_config(112)
    backbone = c.vision_config.backbone_config
    assert (backbone.hidden_size, backbone.num_hidden_layers) == (32, 2)
    assert backbone.global_attn_indexes == [0, 1]
    assert c.detr_decoder_config.num_layers == 2 and c.mask_decoder_config.hidden_size == 32


_NAMES = {"sam2": m2.TINY_NAMES, "sam3": m3.TINY_NAMES, "sam3_tracker": mt.TINY_NAMES}


@pytest.mark.parametrize("family", sorted(_NAMES))
def test_every_small_name_of_the_other_family_is_refused(family) -> None:
    config_cls = CONFIG_CLASSES[family]
    for name in [n for f, names in _NAMES.items() if f != family for n in names]:
        with pytest.raises(ConfigError, match="checkpoint; the"):
            parse_args(config_cls, ["--model_name_or_path", name])


def test_shapes_include_blobs_and_many_objects() -> None:
    counts, shapes_seen = [], set()
    for i in range(40):
        sample = shapes.render_shapes_image(0, i, (128, 128))
        counts.append(len(sample["objects"]))
        shapes_seen |= {o["shape"] for o in sample["objects"]}
        ids = np.unique(sample["label_map"])
        assert list(ids[ids > 0]) == list(range(1, len(sample["objects"]) + 1))
    assert "blob" in shapes_seen and max(counts) <= shapes.MAX_OBJECTS
    assert max(counts) >= 8  # many objects per image, not only a few


@pytest.mark.slow  # two short training runs (probe and budgeted run), ~1 minute
def test_time_budget_sets_max_steps_from_a_probe(tmp_path, capsys) -> None:
    script = load_script("build_demo_checkpoints")
    argv = [
        "--family", "sam2", "--time_budget_minutes", "0.6", "--assets_dir", str(tmp_path),
        "--asset_name", "ck", "--model_name_or_path", "sam2-tiny", "--resolution", "64",
        "--synthetic_num_images", "12", "--synthetic_image_size", "64", "64",
        "--dataset_path", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run"),
        "--per_device_train_batch_size", "2", "--num_correction_clicks", "0",
        "--max_eval_samples", "2", "--dataloader_num_workers", "0",
        # an eval interval for the real run: the probe (which never evaluates) drops it
        "--eval_strategy", "steps", "--eval_steps", "1000",
    ]  # fmt: skip
    assert script.main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("probe:"))
    steps = int(line.split("max_steps ")[1].split()[0])
    state = json.loads((tmp_path / "ck" / "trainer_state.json").read_text())
    assert state["global_step"] == steps >= script.PROBE_STEPS
    card = (tmp_path / "ck" / "PRETRAINING.md").read_text()
    assert f"{steps} optimizer steps of batch 2" in card and "--time_budget_minutes 0.6" in card
    assert (tmp_path / "ck" / "model.safetensors").is_file()


@pytest.mark.parametrize("name", [*m2.TINY_NAMES, *m3.TINY_NAMES, *mt.TINY_NAMES])
def test_every_small_name_is_an_evaluation_source(name: str) -> None:
    """evaluate.py / predict.py take the same names as training (a random-init baseline)."""
    from sam_hf.eval.sources import resolve_source

    src = resolve_source(name, None, seed=0, resolution=None)
    family = "sam3_tracker" if name.startswith("sam3-tracker") else name.split("-")[0]
    assert (src.kind, src.family, src.base) == ("tiny", family, name)
    assert src.resolution == (256 if src.family == "sam2" else 224)
