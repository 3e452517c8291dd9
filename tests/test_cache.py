"""The frozen-encoder embedding cache (sam_hf.cache): cached training equals uncached training,
the cache key follows everything the features depend on, a second run reuses the cache
without running the encoder, and impossible combinations are config errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.sam2 import modeling_sam2

from sam_hf import cache
from sam_hf.configs import ConfigError, Sam2Config, load_config
from sam_hf.models.sam2 import Sam2ForTraining
from sam_hf.tasks import Sam2Task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import sam2_mineapple  # noqa: E402
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
        "batch_size": 2,
        "eval_steps": 0,
        "save_steps": 0,
        "logging_steps": 1,
        "max_objects_per_image": 4,
        "freeze_image_encoder": True,
        "hflip_prob": 0.5,
        "color_jitter": 0.0,
        "eval_on_start": False,
        "lr_scheduler": "constant",
        "warmup_steps": 0,
        "log_images": 0,
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


def test_cached_training_equals_uncached(tmp_path, monkeypatch, recorded_losses):
    """Same losses at every step and the same final weights, bit for bit.

    The cache is filled one image at a time and the uncached run encodes one image per batch
    here too (batch_size 1): a batched CPU convolution may round differently from a single-image
    one, so exact equality is only promised for equal encoder batch shapes (see the next test).
    """
    data = tmp_path / "data"
    calls = EncoderCalls(monkeypatch)
    common = {"batch_size": 1}
    sam2_mineapple.main(argv(overrides(tmp_path / "plain", data, cache_embeddings=False, **common)))
    plain_losses = list(recorded_losses)
    assert calls.n > 0 and not (data / cache.CACHE_DIRNAME).exists()
    recorded_losses.clear()

    sam2_mineapple.main(argv(overrides(tmp_path / "cached", data, cache_embeddings=True, **common)))
    cached_losses = list(recorded_losses)
    folders = list((data / cache.CACHE_DIRNAME).iterdir())
    assert len(folders) == 2  # train and validation splits
    assert plain_losses == cached_losses and len(plain_losses) == 4

    a = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the heads did train
    assert not torch.equal(
        a["mask_decoder.conv_s0.weight"],
        Sam2Task()
        .build_base(load_config(Sam2Config, DEMO_YAML, overrides(tmp_path, data)))[0]
        .state_dict()["mask_decoder.conv_s0.weight"],
    )

    # a second cached run (here: a resume-free rerun) reuses the cache: no encoder call at all
    calls.n = 0
    recorded_losses.clear()
    sam2_mineapple.main(argv(overrides(tmp_path / "again", data, cache_embeddings=True, **common)))
    assert calls.n == 0
    assert recorded_losses == cached_losses


def test_cached_training_with_batches_matches_closely(tmp_path, recorded_losses):
    """With batch_size 2 the uncached encoder sees two images at once, while the cached features
    came from single images: float32 rounding of the batched kernels differs in the last bits.

    Losses then agree to 1e-5 relative. Weights agree to 2e-5 (2% of one AdamW step at lr 1e-3)
    after 4 steps, except the attention key biases: their true gradient is exactly zero (adding
    a constant to every key shifts all of a query's logits alike, and softmax ignores that), so
    their gradient is pure rounding noise, which AdamW normalises into steps of up to lr.
    """
    data = tmp_path / "data"
    sam2_mineapple.main(argv(overrides(tmp_path / "plain", data, cache_embeddings=False)))
    plain = list(recorded_losses)
    recorded_losses.clear()
    sam2_mineapple.main(argv(overrides(tmp_path / "cached", data, cache_embeddings=True)))
    assert recorded_losses == pytest.approx(plain, rel=1e-5, abs=1e-6)
    a = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "final" / "model.safetensors"))
    lr, steps = 1e-3, 4
    for k in a:
        atol = steps * lr if k.endswith("k_proj.bias") else 2e-5
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.fixture()
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def test_cached_bf16_training_equals_uncached_bf16(
    tmp_path, recorded_losses, fresh_accelerate_state
):
    """Under mixed precision the cache is filled under the run's autocast, so the stored maps
    are the bf16 ones an uncached forward computes (half the disk) and training is bit-exact."""
    data = tmp_path / "data"
    kw = {"batch_size": 1, "mixed_precision": "bf16", "max_steps": 3}
    sam2_mineapple.main(argv(overrides(tmp_path / "plain", data, cache_embeddings=False, **kw)))
    plain = list(recorded_losses)
    recorded_losses.clear()
    sam2_mineapple.main(argv(overrides(tmp_path / "cached", data, cache_embeddings=True, **kw)))
    assert recorded_losses == plain and len(plain) == 3
    a = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    stored = load_file(str(next((data / cache.CACHE_DIRNAME).glob("*/000000_n.safetensors"))))
    # the FPN maps come out of autocast in bf16; no_memory_embedding (fp32) promotes the last
    assert [stored[f"level{i}"].dtype for i in range(3)] == [
        torch.bfloat16,
        torch.bfloat16,
        torch.float32,
    ]


def build(tmp_path: Path, data: Path, **kw):
    cfg = load_config(Sam2Config, DEMO_YAML, overrides(tmp_path / "run", data, **kw))
    task = Sam2Task()
    task.prepare_data(cfg)
    module, processor = task.build_model(cfg)
    train, evals = task.build_datasets(cfg, processor)
    return task, module, train, evals


def test_cached_features_are_the_encoder_output_of_the_augmented_sample(tmp_path):
    """Each sample carries the features of exactly the pixels it holds (flipped or not)."""
    task, module, train, _ = build(tmp_path, tmp_path / "data", cache_embeddings=True)
    assert isinstance(train, cache.CachedEmbeddingDataset)
    flips = set()
    for epoch in (0, 1):
        train.set_epoch(epoch)
        for i in range(len(train)):
            s = train[i]
            flips.add(s["hflip"])
            want = module.encoder_features(s["pixel_values"][None])
            assert all(torch.equal(c, w[0]) for c, w in zip(s["image_embeddings"], want))
    assert flips == {False, True}
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
    assert task.cache_on and isinstance(train, cache.CachedEmbeddingDataset)
    for kw in ({"color_jitter": 0.2}, {"freeze_image_encoder": False}):
        task, _, train, _ = build(tmp_path, data, **kw)
        assert not task.cache_on and not isinstance(train, cache.CachedEmbeddingDataset)
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
    assert cache.cache_blockers(cfg) == []
