"""The frozen-encoder embedding cache (sam_hf.features): cached training equals uncached training,
the cache key follows everything the features depend on, a second run reuses the cache
without running the encoder, and impossible combinations are config errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.sam2 import modeling_sam2

from sam_hf.config import ConfigError, Sam2Config, load_config
from sam_hf.config.cache_settings import cache_blockers
from sam_hf.features.dataset import CachedEmbeddingDataset
from sam_hf.features.keys import CACHE_DIRNAME
from sam_hf.models.sam2_training import Sam2ForTraining
from sam_hf.tasks.sam2 import Sam2Task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import sam2_mineapple  # noqa: E402
from equality import (  # noqa: E402
    BF16_LOSS_RTOL,
    FP32_LOSS_RTOL,
    assert_cached_features_are_encoder_output,
    assert_losses_close,
    assert_trained_weights_close,
    trainable_keys,
)
from recipe_runs import ForwardCalls, recipe_argv, record_training_losses, reset_accelerate_state  # noqa: E402

DEMO_YAML = ROOT / "recipes" / "sam2_demo.yaml"


def overrides(out: Path, data: Path, **kw) -> dict:
    """The demo recipe at test scale: tiny random SAM2 at 64 px, frozen encoder, hflip on."""
    base = {
        "model_name_or_path": "sam2-tiny",
        "resolution": 64,
        "dataset_path": str(data),
        "synthetic_num_images": 6,
        "synthetic_image_size": [64, 64],
        "output_dir": str(out),
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
        "max_objects_per_image": 4,
        "freeze_image_encoder": True,
        "hflip_prob": 0.5,
        "color_jitter": 0.0,
        "eval_on_start": False,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "log_images": 0,
        # the cache changes float rounding (see below); a correction click is drawn from the
        # thresholded prediction, so a last-bit difference can move a click and the loss by a
        # discrete step. Clicks have their own tests; these compare the continuous computation.
        "num_correction_clicks": 0,
    }
    base.update(kw)
    return base


def argv(values: dict) -> list[str]:
    return recipe_argv(DEMO_YAML, values)


def EncoderCalls(monkeypatch: pytest.MonkeyPatch) -> ForwardCalls:  # noqa: N802
    """Counts calls of the SAM2 vision encoder (every Sam2Model instance)."""
    return ForwardCalls(monkeypatch, modeling_sam2.Sam2VisionModel)


@pytest.fixture()
def recorded_losses(monkeypatch):
    """Training losses of every forward call, in order."""
    return record_training_losses(monkeypatch, Sam2ForTraining)


def initial_model(
    tmp_path: Path, data: Path, **kw
) -> tuple[dict[str, torch.Tensor], set[str], float]:
    """The weights a run starts from (seeded), the keys it trains and its (constant) lr."""
    cfg = load_config(Sam2Config, DEMO_YAML, overrides(tmp_path, data, **kw))
    assert cfg.lr_scheduler_type == "constant" and cfg.warmup_steps == 0
    model = Sam2Task().build_base(cfg)[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, trainable_keys(model), cfg.learning_rate


def test_cached_training_equals_uncached(tmp_path, monkeypatch, recorded_losses):
    """Same losses at every step and the same final weights, up to float32 rounding.

    The cache is filled one image at a time and the uncached run encodes one image per batch
    here too (batch_size 1), so the encoder features are the same computation either way (see
    test_cached_features_are_the_encoder_output_of_the_augmented_sample: bitwise). The decoder
    is not: it reads the cached maps contiguous where the encoder hands over channels-last ones,
    and on some CPUs (an EPYC) that rounds differently in the last bit.
    """
    data = tmp_path / "data"
    calls = EncoderCalls(monkeypatch)
    common = {"per_device_train_batch_size": 1}
    sam2_mineapple.main(argv(overrides(tmp_path / "plain", data, cache_embeddings=False, **common)))
    plain_losses = list(recorded_losses)
    assert calls.n > 0 and not (data / CACHE_DIRNAME).exists()
    recorded_losses.clear()

    sam2_mineapple.main(argv(overrides(tmp_path / "cached", data, cache_embeddings=True, **common)))
    cached_losses = list(recorded_losses)
    folders = list((data / CACHE_DIRNAME).iterdir())
    assert len(folders) == 2  # train and validation splits
    # cached vs uncached: two computations. Measured worst 6.8e-8 relative (0.6 ulp) with the
    # two runs under different ATen kernels; FP32_LOSS_RTOL = 16 ulp = 1.9e-6 (28x margin).
    assert len(plain_losses) == 4
    assert_losses_close(cached_losses, plain_losses, rel=FP32_LOSS_RTOL)

    a = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "final" / "model.safetensors"))
    init, trainable, lr = initial_model(tmp_path, data)
    # the frozen encoder is bitwise the same copy in both; the trained decoder after 4 AdamW
    # steps at lr 1e-3: elementwise within lr x steps = 4e-3 (measured worst 1.2e-4, an
    # attention key bias whose true gradient is 0: 34x margin) and ||a - b|| within 1e-2 of
    # ||a - init|| (measured worst 3.9e-4: 26x margin)
    assert_trained_weights_close(a, b, init, trainable, lr=lr, steps=4, update_rtol=1e-2)
    # the heads did train
    assert not torch.equal(a["mask_decoder.conv_s0.weight"], init["mask_decoder.conv_s0.weight"])

    # a second cached run (here: a resume-free rerun) reuses the cache: no encoder call at all
    calls.n = 0
    recorded_losses.clear()
    sam2_mineapple.main(argv(overrides(tmp_path / "again", data, cache_embeddings=True, **common)))
    assert calls.n == 0
    # the same computation as the first cached run (same cache files, same kernels): bitwise
    assert recorded_losses == cached_losses


def test_cached_training_with_batches_matches_closely(tmp_path, recorded_losses):
    """With batch_size 2 the uncached encoder sees two images at once, while the cached features
    came from single images: float32 rounding of the batched kernels differs in the last bits,
    on every CPU (batch 1 vs batch 2 is a different computation of the same features).
    """
    data = tmp_path / "data"
    sam2_mineapple.main(argv(overrides(tmp_path / "plain", data, cache_embeddings=False)))
    plain = list(recorded_losses)
    recorded_losses.clear()
    sam2_mineapple.main(argv(overrides(tmp_path / "cached", data, cache_embeddings=True)))
    # batched vs single-image encoder: measured worst 7.9e-8 relative in one process, 1.6e-7
    # with the two runs under different ATen kernels; FP32_LOSS_RTOL = 1.9e-6 (12x margin)
    assert_losses_close(recorded_losses, plain, rel=FP32_LOSS_RTOL)
    a = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "final" / "model.safetensors"))
    init, trainable, lr = initial_model(tmp_path, data)
    # 4 AdamW steps at lr 1e-3, as in test_cached_training_equals_uncached: elementwise within
    # lr x steps = 4e-3 (measured worst 2.1e-4, an attention key bias: 19x margin; other
    # tensors <= 1.2e-5, so the former 2e-5 for them was a 1.7x margin) and ||a - b|| within 1e-2
    # of ||a - init|| (measured worst 4.8e-4: 21x margin)
    assert_trained_weights_close(a, b, init, trainable, lr=lr, steps=4, update_rtol=1e-2)


@pytest.fixture()
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def test_cached_bf16_training_equals_uncached_bf16(
    tmp_path, recorded_losses, fresh_accelerate_state
):
    """Under mixed precision the cache is filled under the run's autocast, so the stored maps
    are bitwise the bf16 ones an uncached forward computes (half the disk); training from them
    then equals uncached training up to bf16 rounding of the (differently laid out) decoder."""
    data = tmp_path / "data"
    kw = {"per_device_train_batch_size": 1, "bf16": True, "max_steps": 3}
    sam2_mineapple.main(argv(overrides(tmp_path / "plain", data, cache_embeddings=False, **kw)))
    plain = list(recorded_losses)
    recorded_losses.clear()
    sam2_mineapple.main(argv(overrides(tmp_path / "cached", data, cache_embeddings=True, **kw)))
    assert len(plain) == 3
    # bf16: measured worst 2.1e-3 relative (two ATen kernels); BF16_LOSS_RTOL = 4 bf16 eps =
    # 3.1e-2 (15x margin)
    assert_losses_close(recorded_losses, plain, rel=BF16_LOSS_RTOL)
    a = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "final" / "model.safetensors"))
    init, trainable, lr = initial_model(tmp_path, data, **kw)
    # In bf16 a last-bit difference is 2^-8 relative and turns noise-level AdamW steps around
    # (measured worst 5.8e-3 after 3 steps at lr 1e-3, 0.35 of the update's norm): the trained
    # weights are only bounded by the optimizer, two opposite steps of <= 1.004 lr each (AdamW's
    # bias-corrected |m / sqrt(v)| in steps 1-3) plus weight decay: 2.5 x lr x steps = 7.5e-3.
    # The frozen encoder stays bitwise, and the features the cached run trained on are checked
    # bit for bit below: that, and the losses, are what says the cache is right.
    assert_trained_weights_close(
        a, b, init, trainable, lr=lr, steps=3, per_step=2.5, update_rtol=None
    )
    stored = load_file(str(next((data / CACHE_DIRNAME).glob("*/000000_n.safetensors"))))
    # the FPN maps come out of autocast in bf16; no_memory_embedding (fp32) promotes the last
    assert [stored[f"level{i}"].dtype for i in range(3)] == [
        torch.bfloat16,
        torch.bfloat16,
        torch.float32,
    ]
    # the cache the run trained on (reused here: same key) holds the encoder's autocast output
    folders = sorted((data / CACHE_DIRNAME).iterdir())
    task, module, train, _ = build(tmp_path, data, cache_embeddings=True, **kw)
    assert train.cache.dir in folders and sorted((data / CACHE_DIRNAME).iterdir()) == folders
    assert_cached_features_are_encoder_output(module, train, torch.bfloat16)


def build(tmp_path: Path, data: Path, **kw):
    cfg = load_config(Sam2Config, DEMO_YAML, overrides(tmp_path / "run", data, **kw))
    task = Sam2Task()
    task.prepare_data(cfg)
    module, processor = task.build_model(cfg)
    train, evals = task.build_datasets(cfg, processor)
    return task, module, train, evals


def test_cached_features_are_the_encoder_output_of_the_augmented_sample(tmp_path):
    task, module, train, _ = build(tmp_path, tmp_path / "data", cache_embeddings=True)
    assert_cached_features_are_encoder_output(module, train, None)
    cfg = load_config(Sam2Config, DEMO_YAML, overrides(tmp_path, tmp_path / "data"))
    batch = task.collator(cfg, True)([train[0], train[1]])
    assert [e.shape[0] for e in batch["image_embeddings"]] == [len(batch["image_ids"])] * 3


def test_cache_key_changes_with_resolution_weights_and_data(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _, _, base, _ = build(tmp_path, data, cache_embeddings=True)
    calls = EncoderCalls(monkeypatch)
    _, _, same, _ = build(tmp_path, data, cache_embeddings=True)
    assert same.cache.dir == base.cache.dir and calls.n == 0  # reused, encoder never ran

    _, _, res, _ = build(tmp_path, data, cache_embeddings=True, resolution=96)
    _, _, weights, _ = build(tmp_path, data, cache_embeddings=True, seed=7)  # another init
    _, _, subset, _ = build(tmp_path, data, cache_embeddings=True, max_train_samples=3)
    dirs = {base.cache.dir, res.cache.dir, weights.cache.dir, subset.cache.dir}
    assert len(dirs) == 4
    assert res.cache.key["resolution"] == 96
    assert weights.cache.key["encoder_weights_sha256"] != base.cache.key["encoder_weights_sha256"]
    assert subset.cache.key["dataset_fingerprint"] != base.cache.key["dataset_fingerprint"]
    assert calls.n > 0


def test_auto_turns_on_only_for_a_cacheable_encoder(tmp_path):
    data = tmp_path / "data"
    task, _, train, _ = build(tmp_path, data)  # auto, frozen, no jitter
    assert task.cache_on and isinstance(train, CachedEmbeddingDataset)
    for kw in ({"color_jitter": 0.2}, {"freeze_image_encoder": False}):
        task, _, train, _ = build(tmp_path, data, **kw)
        assert not task.cache_on and not isinstance(train, CachedEmbeddingDataset)
    task, _, train, _ = build(tmp_path, data, cache_embeddings=False)
    assert not task.cache_on


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            {"use_lora": True, "lora_target_groups": ["vision_encoder", "mask_decoder"]},
            "LoRA on an encoder whose features are cached",
        ),
        (
            {"use_lora": True, "lora_target_regex": r"vision_encoder\..*\.qkv"},
            "LoRA on an encoder whose features are cached",
        ),
        ({"color_jitter": 0.2}, "color_jitter 0.2 > 0"),
        ({"freeze_image_encoder": False}, "freeze_image_encoder is false"),
        ({"cache_embeddings": "sometimes"}, "choose auto, true or false"),
    ],
)
def test_impossible_cache_settings_are_config_errors(tmp_path, kw, message):
    values = {"cache_embeddings": True, **kw}
    with pytest.raises(ConfigError, match=message):
        load_config(Sam2Config, DEMO_YAML, overrides(tmp_path, tmp_path / "d", **values))


def test_lora_on_the_decoder_only_still_caches(tmp_path):
    values = {"cache_embeddings": True, "use_lora": True, "lora_target_groups": ["mask_decoder"]}
    cfg = load_config(Sam2Config, DEMO_YAML, overrides(tmp_path, tmp_path / "d", **values))
    assert cache_blockers(cfg) == []
