"""sam_hf.convert.sam2 without the official package: the key map round trip, bitwise, and the
errors a user sees for a checkpoint that does not fit (unknown / missing keys, another size,
no memory modules, untied Fourier matrices).

The "official" checkpoints here are written by the converter itself from random
``Sam2Model`` weights plus stand-in memory tensors; tests/test_official_sam2.py does the same
against checkpoints the official ``sam2`` package builds.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from scripts_loader import load_script
from transformers import Sam2Model

from sam_hf.config import ConfigError
from sam_hf.convert import sam2 as conv
from sam_hf.convert.common import ConversionError, KeyMapError, read_official, save_official
from sam_hf.models.sam2 import build_sam2, tie_fourier_features, tiny_sam2_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def fake_memory() -> dict[str, torch.Tensor]:
    """One tensor per memory part an official checkpoint has (names as the official model's)."""
    g = torch.Generator().manual_seed(1)
    names = [
        "memory_attention.norm.weight",
        "memory_encoder.out_proj.weight",
        "maskmem_tpos_enc",
        "no_mem_pos_enc",
        "no_obj_ptr",
        "obj_ptr_proj.layers.0.weight",
        "mask_downsample.weight",
        "no_obj_embed_spatial",
    ]
    return {n: torch.randn(3, 2, generator=g) for n in names}


def tiny_model(seed: int = 0) -> Sam2Model:
    torch.manual_seed(seed)
    model = Sam2Model(tiny_sam2_config(256))
    tie_fourier_features(model)
    return model


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    unequal = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not unequal, unequal


def test_tiny_model_to_official_and_back_is_bitwise():
    model = tiny_model()
    hf = model.state_dict()
    official = conv.hf_to_official(hf, fake_memory(), model.config)
    assert "sam_prompt_encoder.point_embeddings.3.weight" in official
    assert "image_encoder.trunk.blocks.0.attn.qkv.weight" in official
    assert not any(k.startswith(("vision_encoder.", "mask_decoder.")) for k in official)
    hf_back, memory, _ = conv.official_to_hf(official, config=model.config)
    assert_bitwise(dict(hf), hf_back)
    assert_bitwise(fake_memory(), memory)
    assert_bitwise(official, conv.hf_to_official(hf_back, memory, model.config))


@pytest.mark.parametrize("size", sorted(conv.SIZES))
def test_every_size_is_inferred_from_its_tensors(size):
    """Shapes only (meta tensors): each official size maps onto Sam2Model(sam2_config(size))."""
    config = conv.sam2_config(size)
    with torch.device("meta"):
        hf = Sam2Model(config).state_dict()
    hf.pop(conv.HF_FOURIER[1])  # the official model has one matrix (equality needs values)
    official = conv.hf_to_official(hf, fake_memory())
    assert conv.infer_size(official) == size
    hf_back, _, cfg = conv.official_to_hf(official)
    assert set(hf_back) == set(hf) | {conv.HF_FOURIER[1]}
    assert cfg.vision_config.backbone_config.blocks_per_stage == conv.SIZES[size][2]
    assert conv.canonical_size(size.replace("sam2.1-hiera-", "sam2_hiera_")) == size


def test_unknown_and_missing_keys_are_listed():
    model = tiny_model()
    official = conv.hf_to_official(model.state_dict(), fake_memory(), model.config)
    official["image_encoder.trunk.extra_thing.weight"] = torch.zeros(1)
    del official["sam_mask_decoder.conv_s0.bias"]
    with pytest.raises(KeyMapError) as err:
        conv.official_to_hf(official, config=model.config)
    msg = str(err.value)
    assert "1 unknown (image_encoder.trunk.extra_thing.weight)" in msg
    assert "1 missing (mask_decoder.conv_s0.bias)" in msg
    assert err.value.unknown == ["image_encoder.trunk.extra_thing.weight"]


def test_a_checkpoint_without_memory_modules_is_refused():
    model = tiny_model()
    memory = {k: v for k, v in fake_memory().items() if not k.startswith("memory_encoder.")}
    with pytest.raises(KeyMapError, match=r"missing \(memory_encoder\)"):
        conv.hf_to_official(model.state_dict(), memory)


def test_untied_fourier_matrices_cannot_export():
    torch.manual_seed(0)
    model = Sam2Model(tiny_sam2_config(256))  # fresh: two independent matrices
    with pytest.raises(ConversionError, match="tie them"):
        conv.hf_to_official(model.state_dict(), fake_memory())


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory) -> tuple:
    """A real-size hiera-tiny checkpoint (random weights) in the official format."""
    torch.manual_seed(0)
    model = Sam2Model(conv.sam2_config("sam2.1-hiera-tiny", 256))
    tie_fourier_features(model)
    path = tmp_path_factory.mktemp("pt") / "sam2.1_hiera_tiny.pt"
    save_official(conv.model_to_official(model, fake_memory()), path)
    return path, read_official(path)


def test_wrong_size_names_the_mismatching_keys(tiny_pt):
    path, state = tiny_pt
    with pytest.raises(ConversionError) as err:
        conv.official_to_hf(state, model_type="sam2.1-hiera-large", what=str(path))
    msg = str(err.value)
    assert "is not a sam2.1-hiera-large checkpoint; the tensors look like sam2.1-hiera-tiny" in msg
    assert "image_encoder.trunk.patch_embed.proj.weight: file (96, 3, 7, 7), expected" in msg


def test_script_round_trip_is_bitwise(tiny_pt, tmp_path):
    """official .pt -> folder (loads with Sam2Model.from_pretrained) -> official .pt."""
    main = load_script("convert_checkpoint").main
    path, state = tiny_pt
    assert main(["--to", "hf", "--in", str(path), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / conv.EXTRA_FILE).is_file()
    Sam2Model.from_pretrained(tmp_path / "hf")
    back = tmp_path / "back.pt"
    assert main(["--to", "official", "--in", str(tmp_path / "hf"), "--out", str(back)]) == 0
    assert_bitwise(state, read_official(back))
    bad = ["--to", "hf", "--in", str(path), "--out", str(tmp_path / "x"), "--model_type", "l"]
    assert main(bad) == 2


def _cfg(name, **kw):
    base = dict(
        model_name_or_path=name,
        model_type=None,
        resolution=256,
        seed=0,
        export_official=False,
        freeze_image_encoder=False,
        freeze_prompt_encoder=False,
        freeze_mask_decoder=False,
    )
    return SimpleNamespace(**{**base, **kw})


def test_build_sam2_takes_an_official_pt(tiny_pt):
    path, state = tiny_pt
    model, processor = build_sam2(_cfg(str(path), export_official=True))
    assert processor.image_processor.size["height"] == 256
    hf, _, _ = conv.official_to_hf(state)
    assert_bitwise(hf, {k: v for k, v in model.state_dict().items()})
    with pytest.raises(ConfigError, match="export_official"):
        build_sam2(_cfg("sam2-tiny", export_official=True))


def test_evaluate_and_predict_load_an_official_pt(tiny_pt):
    """evaluate.py / predict.py resolve a model source through eval.sources: an official .pt
    is a SAM2 source (at the official 1024 px unless told), converted by the training builder."""
    from sam_hf.eval.sources import load_model, resolve_source

    path, state = tiny_pt
    src = resolve_source(str(path))
    assert (src.kind, src.family, src.resolution) == ("official", "sam2", 1024)
    loaded = load_model(str(path), resolution=256)
    assert loaded.resolution == 256 and loaded.family == "sam2"
    hf, _, _ = conv.official_to_hf(state)
    assert_bitwise(hf, dict(loaded.module.model.state_dict()))
