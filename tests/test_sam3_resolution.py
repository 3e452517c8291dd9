"""SAM3 trains and evaluates below the 1008 px it was pretrained at (sam3 issues #251, #361).

The ViT's global-attention layers keep a precomputed RoPE position table sized for the
configured ``image_size``; a model built for one size and fed another crashes on it. sam_hf's
``resolution`` config key goes through ``set_sam3_resolution`` (in ``build_sam3``), which
recomputes the tables. Checked here:

- tiny config, two sizes (224 = its native 16 x 16 tokens, and 112 = 8 x 8), loaded from a saved
  224 px folder through ``build_sam3``: the recomputed tables equal those of a model built
  natively at that size (bitwise: the same formula), and a training forward, the loss,
  backward (finite gradients reaching the ViT) and evaluation (``predict``) all run;
- full-size ``Sam3Config()`` (facebook/sam3's architecture) on the meta device (shapes only,
  no weights, no compute): at 840, 672 and 560 px the tables have (size / 14)^2 rows and the
  ViT + FPN forward gives maps of 4, 2, 1 and 1/2 times the token grid; fed 840 px without
  the recomputation, it fails. (The DETR and mask heads cannot run on the meta device --
  they call ``.item()`` -- and read only the FPN maps' shapes; the GPU suite trains and
  evaluates the full model at the four sizes.)
"""

from __future__ import annotations

import pytest
import torch
from test_sam3_model import _args
from transformers import Sam3Config, Sam3Model

from sam_hf.data.queries import PhraseVocab, Sam3Collator
from sam_hf.models.sam3 import (
    Sam3ForTraining,
    build_sam3,
    set_sam3_resolution,
    tiny_sam3_config,
)

ORIG = (90, 120)


def _samples(res: int) -> list[dict]:
    """Two images with square objects (per the transforms contract), at ``res`` px."""
    out = []
    for index, boxes in enumerate(
        [[(0.1, 0.1, 0.4, 0.5), (0.5, 0.6, 0.9, 0.9)], [(0.3, 0.2, 0.7, 0.6)]]
    ):
        masks, orig, xyxy = [], [], []
        for x0, y0, x1, y1 in boxes:
            m = torch.zeros(res, res, dtype=torch.bool)
            m[int(y0 * res) : int(y1 * res), int(x0 * res) : int(x1 * res)] = True
            o = torch.zeros(ORIG, dtype=torch.bool)
            o[int(y0 * ORIG[0]) : int(y1 * ORIG[0]), int(x0 * ORIG[1]) : int(x1 * ORIG[1])] = True
            masks.append(m)
            orig.append(o)
            xyxy.append([int(x0 * res), int(y0 * res), int(x1 * res), int(y1 * res)])
        out.append(
            {
                "pixel_values": torch.randn(
                    3, res, res, generator=torch.Generator().manual_seed(index)
                ),
                "masks": torch.stack(masks),
                "boxes": torch.tensor(xyxy, dtype=torch.float32),
                "phrases": ["red box"] * len(boxes),
                "categories": ["box"] * len(boxes),
                "attributes": [{"color": "red"}] * len(boxes),
                "negative_phrases": ["disc"],
                "image_id": f"img{index}",
                "index": index,
                "orig_size": ORIG,
                "seed": index,
                "orig_masks": torch.stack(orig),
            }
        )
    return out


def _global_tables(model: Sam3Model) -> list[torch.Tensor]:
    layers = model.vision_encoder.backbone.layers
    return [layer.position_ids for layer in layers if layer.window_size == 0]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("sam3_224")
    model, processor = build_sam3(_args(resolution=224))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("res", [224, 112])
def test_tiny_trains_and_evaluates_at_two_sizes(tiny_folder, res: int) -> None:
    args = _args(model_name_or_path=str(tiny_folder), resolution=res)
    model, processor = build_sam3(args)
    assert model.config.vision_config.backbone_config.image_size == res
    assert processor.image_processor.size == {"height": res, "width": res}
    # the recomputed RoPE tables are those of a model built at this size (same formula: bitwise)
    native = Sam3Model(tiny_sam3_config(res))
    got, want = _global_tables(model), _global_tables(native)
    assert len(got) == 2 and all(t.shape == ((res // 14) ** 2, 2) for t in got)
    for a, b in zip(got, want):
        assert torch.equal(a, b)

    samples = _samples(res)
    vocab = PhraseVocab.from_rows(samples)
    wrapper = Sam3ForTraining(model, args).train()
    batch = Sam3Collator(args, vocab, processor.tokenizer, train=True)(samples)
    out = wrapper(batch)
    assert out["num_queries"] > 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    vit_grads = [p.grad for p in model.vision_encoder.parameters() if p.grad is not None]
    assert vit_grads and all(torch.isfinite(g).all() for g in vit_grads)

    wrapper.eval()
    eval_batch = Sam3Collator(args, vocab, processor.tokenizer, train=False)(samples)
    outputs, _ = wrapper.run(eval_batch)
    assert outputs.pred_masks.shape[-2:] == (res // 14 * 4, res // 14 * 4)
    results = wrapper.predict(eval_batch)
    assert [r["image_id"] for r in results] == ["img0", "img1"]
    for r in results:
        for pair in r["pairs"]:
            assert pair["pred"].shape[1:] == ORIG  # back at the original size


def test_full_size_position_tables_recomputed_on_meta() -> None:
    with torch.device("meta"):
        model = Sam3Model(Sam3Config())
    window = model.config.vision_config.backbone_config.window_size
    px = lambda r: torch.empty(1, 3, r, r, device="meta")  # noqa: E731
    with torch.no_grad(), pytest.raises(RuntimeError):
        model.get_vision_features(pixel_values=px(840))  # built for 1008: the tables do not fit
    for res in (840, 672, 560, 1008):
        set_sam3_resolution(model, None, res)
        g = res // 14
        assert model.config.vision_config.backbone_config.image_size == res
        for layer in model.vision_encoder.backbone.layers:
            rows = g * g if layer.window_size == 0 else window * window
            assert layer.position_ids.shape == (rows, 2), (res, layer.window_size)
        with torch.no_grad():
            out = model.get_vision_features(pixel_values=px(res))
        sizes = [tuple(f.shape[-2:]) for f in out.fpn_hidden_states]
        assert sizes == [(4 * g, 4 * g), (2 * g, 2 * g), (g, g), (g // 2, g // 2)], res
