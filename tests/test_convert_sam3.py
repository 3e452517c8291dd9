"""SAM3 official <-> transformers conversion without the official package (tiny configs).

A tiny random ``Sam3Model`` goes to the official ``sam3.pt`` layout and back: every tensor
comes back bitwise (renames, a transpose, and q/k/v concatenations / splits move bits, they
compute nothing). A folder written from an official-layout file loads with plain
``Sam3Model.from_pretrained`` and predicts what the model it came from predicts (to float32
rounding: another computation, see the test), and keys that do not fit are errors that name
them.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Sam3Model

from sam_hf.convert.common import ConversionError, KeyMapError, read_official
from sam_hf.convert.sam3 import (
    CLS_ROW,
    EXTRA_FILE,
    folder_to_official,
    hf_to_official,
    official_to_folder,
    official_to_hf,
)
from sam_hf.models.sam3 import tiny_sam3_config


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = tiny_sam3_config()
    model = Sam3Model(config).eval()
    with torch.no_grad():  # transformers zero-initialises some biases: make every tensor distinct
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model, config


def _official(model) -> dict[str, torch.Tensor]:
    extra = {CLS_ROW: torch.randn(1, 1, model.config.vision_config.backbone_config.hidden_size)}
    return hf_to_official(model.state_dict(), extra, config=model.config)


def test_hf_official_hf_is_bitwise(tiny):
    model, config = tiny
    official = _official(model)
    assert all(k.startswith("detector.") for k in official)
    back, extra = official_to_hf(official, config)
    sd = model.state_dict()
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)
    assert set(extra) == {CLS_ROW}


def test_official_hf_official_is_bitwise(tiny):
    model, config = tiny
    official = _official(model)
    official["tracker.no_mem_pos_enc"] = torch.randn(1, 1, 256)  # carried verbatim
    hf_state, extra = official_to_hf(official, config)
    again = hf_to_official(hf_state, extra, config=config)
    assert set(again) == set(official)
    assert all(torch.equal(again[k], official[k]) for k in official)


def test_fused_attention_is_the_concatenation(tiny):
    """Official ``in_proj_weight`` / ``qkv`` is [q; k; v] of transformers' projections."""
    model, _ = tiny
    official = _official(model)
    sd = model.state_dict()
    fused = official["detector.transformer.decoder.layers.0.ca_text.in_proj_weight"]
    parts = [sd[f"detr_decoder.layers.0.text_cross_attn.{n}_proj.weight"] for n in "qkv"]
    assert torch.equal(fused, torch.cat(parts))
    qkv = official["detector.backbone.vision_backbone.trunk.blocks.1.attn.qkv.bias"]
    parts = [sd[f"vision_encoder.backbone.layers.1.attention.{n}_proj.bias"] for n in "qkv"]
    assert torch.equal(qkv, torch.cat(parts))
    proj = official["detector.backbone.language_backbone.encoder.text_projection"]
    assert torch.equal(proj, sd["text_encoder.text_projection.weight"].t())


def test_folder_loads_and_predicts_the_same(tiny, tmp_path):
    model, config = tiny
    official = _official(model)
    path = tmp_path / "sam3.pt"
    torch.save({"model": official}, path)
    folder = official_to_folder(path, tmp_path / "hf", config=config)
    assert (folder / EXTRA_FILE).is_file()
    loaded, info = Sam3Model.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.manual_seed(3)
    pixels = torch.randn(1, 3, 224, 224)
    ids = torch.randint(1, 1000, (1, 32))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = model(pixel_values=pixels, input_ids=ids, attention_mask=mask)
        b = loaded.eval()(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    # The same weights but a different computation: from_pretrained's weights are views of
    # the file with another alignment (tests/equality.py), and the text projection was stored
    # transposed. Outputs are <= 0.8; measured worst 4.2e-9 (pred_logits; default and avx2
    # kernels here; a fresh clone saw a last-bit difference); atol 1e-6 is a 240x margin and
    # far below any real mapping error (a swapped or missing tensor moves outputs by > 1e-3).
    for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-6, rtol=0)
    out = folder_to_official(folder, tmp_path / "back.pt")
    again = read_official(out)
    assert set(again) == set(official)
    assert all(torch.equal(again[k], official[k]) for k in official)


def test_unknown_and_missing_keys_are_listed(tiny):
    model, config = tiny
    official = _official(model)
    official["detector.backbone.vision_backbone.trunk.blocks.0.attn.typo.weight"] = torch.zeros(1)
    official["something.else"] = torch.zeros(1)
    del official["detector.transformer.decoder.query_embed.weight"]
    with pytest.raises(KeyMapError) as err:
        official_to_hf(official, config)
    message = str(err.value)
    assert "2 unknown" in message and "1 missing" in message
    assert "detector.backbone.vision_backbone.trunk.blocks.0.attn.typo.weight" in message
    assert "something.else" in message
    assert "detr_decoder.query_embed.weight" in message


def test_unused_hf_keys_and_wrong_sizes_are_errors(tiny):
    model, config = tiny
    sd = dict(model.state_dict())
    sd["detr_decoder.extra_head.weight"] = torch.zeros(1)
    with pytest.raises(KeyMapError, match="1 unused.*detr_decoder.extra_head.weight"):
        hf_to_official(sd, config=config)
    official = _official(model)
    key = "detector.transformer.decoder.query_embed.weight"
    official[key] = official[key][:5]
    with pytest.raises(ConversionError, match="1 tensors have other shapes.*query_embed"):
        official_to_hf(official, config)


def test_the_sam3_recipe_builder_takes_an_official_pt(tiny, tmp_path, monkeypatch):
    """``model_name_or_path: sam3.pt`` in the SAM3 recipe / evaluate.py: the detector is
    converted on load (bitwise) at the recipe's resolution. The released size is 840 M
    parameters, so the builder's config is the tiny one here (same code path)."""
    from types import SimpleNamespace

    import sam_hf.convert.sam3 as c3
    import sam_hf.models.sam3 as m3
    from sam_hf.convert.common import save_official

    model, config = tiny
    path = tmp_path / "sam3.pt"
    save_official(_official(model), path)
    monkeypatch.setattr(c3, "released_sam3_config", tiny_sam3_config)
    cfg = SimpleNamespace(
        model_name_or_path=str(path),
        resolution=config.vision_config.backbone_config.image_size,
        freeze_tracker=True,
        seed=0,
    )
    built, processor = m3.build_sam3(cfg)
    sd, got = model.state_dict(), built.state_dict()
    assert set(sd) == set(got) and all(torch.equal(sd[k], got[k]) for k in sd)
    assert processor.image_processor.size["height"] == cfg.resolution


def test_tracker_heads_map_back_and_forth_bitwise():
    """The tracker's prompt encoder and mask decoder (SAM2's heads rules with lin1/lin2):
    a Sam3TrackerModel's heads written under official names come back bitwise, every key."""
    from transformers import Sam3TrackerModel

    from sam_hf.convert.common import rename
    from sam_hf.convert.sam3_tracker import (
        _FOURIER,
        _HF_FOURIER,
        _POINTS,
        TRACKER_RULES,
        tracker_config,
        tracker_image_state,
    )

    torch.manual_seed(0)
    config = tracker_config(tiny_sam3_config())
    hf = Sam3TrackerModel(config).state_dict()
    shared = hf[_HF_FOURIER[0]]
    hf[_HF_FOURIER[1]] = shared.clone()  # one matrix officially: tied
    vision = {k: v for k, v in hf.items() if k.startswith("vision_encoder.")}
    heads = {k: v for k, v in hf.items() if k not in vision and k not in _HF_FOURIER}
    points = heads.pop("prompt_encoder.point_embed.weight")
    official, rest = rename(heads, TRACKER_RULES, "hf")
    assert rest == [], rest
    official.update({_POINTS.format(i): points[i : i + 1] for i in range(points.shape[0])})
    official[_FOURIER] = shared
    back = tracker_image_state(official, vision, config)
    assert set(back) == set(hf)
    assert all(torch.equal(back[k], hf[k]) for k in hf)
