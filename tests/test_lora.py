"""LoRA through peft on tiny random SAM2 / SAM3 models: targets, training, merge, checkpoints."""

from __future__ import annotations

import copy
import re
from types import SimpleNamespace

import pytest
import torch
from equality import assert_same_state_dict
from peft import PeftModel
from transformers import Sam2Config, Sam2Model, Sam3Config, Sam3Model

from sam_hf.models import lora

SAM2_BLOCKS = [1, 1, 2, 1]
SAM3_LAYERS = 2
IMG = 128  # the names do not depend on it; 128 px keeps the CPU tests quick


def tiny_sam2(seed: int = 0) -> Sam2Model:
    """Hiera hidden 16, stages [1,1,2,1], FPN 32, decoder 32 (same seed = same weights)."""
    torch.manual_seed(seed)
    cfg = Sam2Config(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=16,
                blocks_per_stage=SAM2_BLOCKS,
                embed_dim_per_stage=[16, 32, 64, 128],
                num_attention_heads_per_stage=[1, 1, 1, 1],
                window_size_per_stage=[4, 4, 4, 4],
                global_attention_blocks=[3],
                image_size=[IMG, IMG],
            ),
            backbone_channel_list=[128, 64, 32, 16],
            backbone_feature_sizes=[[IMG // 4] * 2, [IMG // 8] * 2, [IMG // 16] * 2],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=IMG),
        mask_decoder_config=dict(hidden_size=32),
    )
    return Sam2Model(cfg).eval()


def tiny_sam3(seed: int = 0, vocab_size: int = 1000) -> Sam3Model:
    """The sizes of transformers' own SAM3 tests: ViT 32 x 2 layers at 224 px, CLIP 32, DETR 32.

    ``vocab_size=49408`` fits the real CLIP tokenizer (for running the processor end to end).
    """
    torch.manual_seed(seed)
    cfg = Sam3Config(
        vision_config=dict(
            model_type="sam3_vision_model",
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=32,
                num_hidden_layers=SAM3_LAYERS,
                num_attention_heads=4,
                intermediate_size=64,
                image_size=224,
                patch_size=14,
                window_size=8,
                global_attn_indexes=[0, 1],
            ),
            fpn_hidden_size=32,
            scale_factors=[2.0, 1.0],
        ),
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=SAM3_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=32,
            hidden_act="gelu",
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
        ),
        geometry_encoder_config=dict(
            model_type="sam3_geometry_encoder",
            hidden_size=32,
            num_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            mask_fuser_hidden_size=32,
            mask_fuser_num_layers=1,
        ),
        detr_encoder_config=dict(
            model_type="sam3_detr_encoder",
            hidden_size=32,
            num_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
        ),
        detr_decoder_config=dict(
            model_type="sam3_detr_decoder",
            hidden_size=32,
            num_layers=1,
            num_queries=5,
            num_attention_heads=4,
            intermediate_size=64,
        ),
        mask_decoder_config=dict(
            model_type="sam3_mask_decoder", hidden_size=32, num_upsampling_stages=2
        ),
    )
    return Sam3Model(cfg).eval()


def lora_cfg(**kw) -> SimpleNamespace:
    base = dict(
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        lora_target_groups=["vision_encoder", "mask_decoder"],
        lora_target_regex=None,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def sam2_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        pixel_values=torch.randn(1, 3, IMG, IMG, generator=g),
        input_points=torch.rand(1, 2, 1, 2, generator=g) * IMG,
        input_labels=torch.ones(1, 2, 1, dtype=torch.long),
    )


def sam3_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        pixel_values=torch.randn(1, 3, 224, 224, generator=g),
        input_ids=torch.randint(0, 990, (1, 8), generator=g),
        attention_mask=torch.ones(1, 8, dtype=torch.long),
    )


def sam2_loss(out, g: torch.Generator) -> torch.Tensor:
    target = (torch.rand(out.pred_masks.shape, generator=g) > 0.5).float()
    return (
        torch.nn.functional.binary_cross_entropy_with_logits(out.pred_masks, target)
        + (out.iou_scores - torch.rand(out.iou_scores.shape, generator=g)).pow(2).mean()
        + torch.nn.functional.binary_cross_entropy_with_logits(
            out.object_score_logits, torch.ones_like(out.object_score_logits)
        )
    )


def sam3_loss(out, g: torch.Generator) -> torch.Tensor:
    target = (torch.rand(out.pred_masks.shape, generator=g) > 0.5).float()
    return (
        torch.nn.functional.binary_cross_entropy_with_logits(out.pred_masks, target)
        + torch.nn.functional.binary_cross_entropy_with_logits(
            out.pred_logits, torch.zeros_like(out.pred_logits)
        )
        + torch.nn.functional.binary_cross_entropy_with_logits(
            out.presence_logits, torch.ones_like(out.presence_logits)
        )
        + (out.pred_boxes - 0.5).abs().mean()
        + out.semantic_seg.sigmoid().mean()
    )


def train_steps(model, inputs: dict, loss_fn, steps: int, **fwd) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for i in range(steps):
        kw = dict(fwd)
        if "multimask_output" in fwd:  # alternate so every hypernetwork MLP gets a gradient
            kw["multimask_output"] = bool(i % 2)
        loss = loss_fn(model(**inputs, **kw), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def sam2_masks(model) -> torch.Tensor:
    model.eval()
    return model(**sam2_inputs(seed=7), multimask_output=True).pred_masks


@pytest.fixture(scope="module")
def trained_sam2():
    """A tiny SAM2 with LoRA on both groups after 4 optimizer steps, plus its snapshot."""
    pm = lora.apply_lora(tiny_sam2(), lora_cfg(), "sam2")
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    train_steps(pm, sam2_inputs(), sam2_loss, steps=4, multimask_output=False)
    return pm, before, sam2_masks(pm)


# ----------------------------------------------------------------------------- targets


def test_sam2_vision_group_is_hiera_attention_only():
    model = tiny_sam2()
    names = lora.matching_modules(model, lora.target_regex("sam2", ["vision_encoder"]))
    assert len(names) == 2 * sum(SAM2_BLOCKS)
    assert all(re.search(r"\.attn\.(qkv|proj)$", n) for n in names)
    assert not [n for n in names if re.search(r"blocks\.\d+\.proj$", n)]
    # the stage-transition projections exist and are exactly what a bare `proj` would also hit
    transitions = [n for n, _ in model.named_modules() if re.fullmatch(r".*blocks\.\d+\.proj", n)]
    assert len(transitions) == 3


def test_sam2_mask_decoder_group_is_two_way_attention():
    model = tiny_sam2()
    names = lora.matching_modules(model, lora.target_regex("sam2", ["mask_decoder"]))
    # 2 layers x 3 attentions + the final attention, each with q/k/v/o
    assert len(names) == 4 * (2 * 3 + 1)
    assert all(n.startswith("mask_decoder.transformer.") for n in names)
    assert all(re.search(r"\.(q|k|v|o)_proj$", n) for n in names)
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in names)


def test_sam3_groups_match_each_part():
    model = tiny_sam3()
    expected = {
        "vision_encoder": (4 * SAM3_LAYERS, r"vision_encoder\.backbone\.layers\.\d+\.attention\."),
        "text_encoder": (4 * SAM3_LAYERS, r"text_encoder\.text_model\.encoder\.layers\.\d+\."),
        "detr_decoder": (12, r"detr_decoder\.layers\.0\."),  # 3 attentions x q/k/v/o, 1 layer
        "mask_decoder": (4, r"mask_decoder\.prompt_cross_attn\."),
    }
    seen: set[str] = set()
    for group, (count, prefix) in expected.items():
        names = lora.matching_modules(model, lora.target_regex("sam3", [group]))
        assert len(names) == count, (group, names)
        assert all(re.match(prefix, n) for n in names), names
        assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in names)
        assert not seen & set(names)
        seen |= set(names)
    assert "text_encoder.text_model.encoder.layers.0.self_attn.out_proj" in seen


def test_group_not_in_family_names_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"text_encoder.*valid groups are \['mask_decoder', 'vision"
    ):
        lora.target_regex("sam2", ["vision_encoder", "text_encoder"])
    with pytest.raises(ValueError, match="No LoRA targets"):
        lora.target_regex("sam3", [])


def test_raw_regex_wins_over_groups():
    model = tiny_sam2()
    cfg = lora_cfg(lora_target_regex=r"vision_encoder\.backbone\.blocks\.0\.attn\.qkv")
    pm = lora.apply_lora(model, cfg, "sam2")
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in pm.named_parameters() if ".lora_A." in n}
    assert adapted == {"base_model.model.vision_encoder.backbone.blocks.0.attn.qkv"}
    with pytest.raises(ValueError, match="matches no module"):
        lora.apply_lora(tiny_sam2(), lora_cfg(lora_target_regex="nothing_here"), "sam2")


def test_freeze_flag_keeps_heads_of_that_part_frozen():
    model = tiny_sam2()
    assert len(lora.heads_to_save(model, "sam2", SimpleNamespace())) == 6
    assert lora.heads_to_save(model, "sam2", SimpleNamespace(freeze_mask_decoder=True)) == []
    pm = lora.apply_lora(model, lora_cfg(freeze_mask_decoder=True), "sam2")
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)


# ---------------------------------------------------------------------------- training


def test_only_adapters_and_heads_change(trained_sam2):
    pm, before, _ = trained_sam2
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(lora.is_trainable_key(n) for n in trainable)
    changed = {n for n, p in pm.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable  # no frozen base weight moved (nor the heads' original copies)
    lora_b = {n for n in trainable if ".lora_B." in n}
    assert lora_b and lora_b <= changed
    for head in ("iou_prediction_head", "pred_obj_score_head", "output_hypernetworks_mlps.0"):
        assert any(f".{head}.modules_to_save." in n for n in changed), head
    frac = sum(p.numel() for n, p in pm.named_parameters() if n in trainable) / sum(
        p.numel() for p in pm.parameters()
    )
    assert frac < 0.2


def test_merged_model_equals_adapter_model(trained_sam2):
    pm, _, want = trained_sam2
    merged = lora.merge_to_base(pm, copy_model=True)
    assert type(merged) is Sam2Model
    assert not [n for n, _ in merged.named_modules() if "lora" in n or "modules_to_save" in n]
    # (W + s B A) x vs W x + s B (A x): two formulas. Mask logits are <= 4.1e-3 here (one ulp
    # 4.7e-10); measured worst 2.2e-9, and 4e-9 for one forward under two ATen kernels:
    # atol 1e-7 is a 25x margin (the untouched base differs by > 1e-3, below)
    torch.testing.assert_close(sam2_masks(merged), want, atol=1e-7, rtol=0)
    # the adapters really did something: the untouched base gives other masks
    assert not torch.allclose(sam2_masks(tiny_sam2()), want, atol=1e-3)


def test_merged_model_reloads_with_plain_transformers(trained_sam2, tmp_path):
    pm, _, want = trained_sam2
    merged = lora.merge_to_base(pm, copy_model=True)
    merged.save_pretrained(tmp_path / "final")
    reloaded = Sam2Model.from_pretrained(tmp_path / "final")
    # save/load copies the merged weights exactly; the forward is the merged formula of the
    # test above on reloaded (differently aligned) weights: the same atol 1e-7 (25x margin)
    assert_same_state_dict(merged.state_dict(), reloaded.state_dict())
    torch.testing.assert_close(sam2_masks(reloaded), want, atol=1e-7, rtol=0)


def test_adapter_folder_is_small_and_loads_with_peft(trained_sam2, tmp_path):
    pm, _, want = trained_sam2
    path = lora.save_adapter(pm, tmp_path / "final")
    assert path == tmp_path / "final" / "adapter"
    assert (path / "adapter_config.json").is_file()
    lora.merge_to_base(pm, copy_model=True).save_pretrained(tmp_path / "merged")
    adapter_bytes = (path / "adapter_model.safetensors").stat().st_size
    full_bytes = (tmp_path / "merged" / "model.safetensors").stat().st_size
    assert adapter_bytes < 0.25 * full_bytes, (adapter_bytes, full_bytes)
    loaded = PeftModel.from_pretrained(tiny_sam2(), path)
    # the same adapter formula on reloaded (differently aligned) weights: measured 0 in one
    # process, 4e-9 for this forward under two ATen kernels; atol 1e-7 is a 25x margin
    torch.testing.assert_close(sam2_masks(loaded), want, atol=1e-7, rtol=0)


def test_trainable_state_dict_round_trip(trained_sam2):
    pm, _, want = trained_sam2
    sd = lora.trainable_state_dict(pm)
    assert sd and all(lora.is_trainable_key(k) for k in sd)
    assert not any(".original_module." in k for k in sd)
    n_sd = sum(v.numel() for v in sd.values())
    assert n_sd == sum(p.numel() for p in pm.parameters() if p.requires_grad)

    class Wrapper(torch.nn.Module):  # how the trainer holds it: Sam2ForTraining(model=peft)
        def __init__(self, model):
            super().__init__()
            self.model = model

    fresh = Wrapper(lora.apply_lora(tiny_sam2(), lora_cfg(), "sam2"))
    wrapped_sd = {f"model.{k}": v for k, v in sd.items()}
    lora.load_trainable_state_dict(fresh, wrapped_sd)
    # load_state_dict copies into the same (built, aligned) parameters: the same computation
    torch.testing.assert_close(sam2_masks(fresh.model), want, atol=0, rtol=0)
    assert set(lora.trainable_state_dict(fresh)) == set(wrapped_sd)

    other_rank = lora.apply_lora(tiny_sam2(), lora_cfg(lora_target_groups=["mask_decoder"]), "sam2")
    with pytest.raises(ValueError, match="does not fit this model"):
        lora.load_trainable_state_dict(other_rank, sd)


def test_sam3_lora_trains_heads_and_merges():
    cfg = lora_cfg(
        lora_target_groups=["vision_encoder", "text_encoder", "detr_decoder", "mask_decoder"]
    )
    pm = lora.apply_lora(tiny_sam3(), cfg, "sam3")
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    train_steps(pm, sam3_inputs(), sam3_loss, steps=3)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    changed = {n for n, p in pm.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    for head in ("box_head", "presence_head", "dot_product_scoring", "mask_embedder"):
        assert any(f"{head}.modules_to_save." in n for n in changed), head
    for group in ("backbone.layers", "text_model.encoder", "detr_decoder.layers", "prompt_cross"):
        assert any(group in n and ".lora_B." in n for n in changed), group

    with torch.no_grad():
        want = pm(**sam3_inputs(seed=5))
        merged = lora.merge_to_base(copy.deepcopy(pm))
        got = merged(**sam3_inputs(seed=5))
    assert type(merged) is Sam3Model
    # merged vs adapter formula: outputs <= 0.95, measured worst 1.2e-7 (4 ulp at 0.95); atol
    # 1e-5 is an 83x margin
    for key in ("pred_masks", "pred_logits", "pred_boxes", "presence_logits"):
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0)
