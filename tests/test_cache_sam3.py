"""SAM3 with the embedding cache: cached image (FPN) and phrase features train exactly like
the encoders they replace (fp32 and bf16, with resume), every phrase the query sampler can
draw is in the phrase cache, and a phrase that is not gets encoded on the spot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.clip import modeling_clip
from transformers.models.sam3 import modeling_sam3

from sam_hf.config import ConfigError, Sam3Config, load_config
from sam_hf.config.cache_settings import cache_blockers, text_cache_blockers
from sam_hf.data.queries import PhraseVocab, candidate_phrases, sample_queries
from sam_hf.features.dataset import CachedEmbeddingDataset
from sam_hf.features.keys import CACHE_DIRNAME
from sam_hf.features.store import PhraseFeatures
from sam_hf.models.sam3 import Sam3ForTraining
from sam_hf.tasks.sam3 import Sam3Task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import sam3_coco_text  # noqa: E402
from equality import (  # noqa: E402
    BF16_LOSS_RTOL,
    FP32_LOSS_RTOL,
    assert_losses_close,
    assert_same_state_dict,
    assert_trained_weights_close,
    trainable_keys,
)
from equality import (  # noqa: E402
    assert_cached_features_are_encoder_output as assert_features_match_encoder,
)
from recipe_runs import ForwardCalls, recipe_argv, record_training_losses, reset_accelerate_state  # noqa: E402

DEMO_YAML = ROOT / "recipes" / "sam3_demo.yaml"


def overrides(out: Path, data: Path, **kw) -> dict:
    """Tiny random SAM3 at 56 px on 6 synthetic orchard images, both encoders frozen, hflip and
    attribute hard negatives on (so every kind of query and both flip variants occur)."""
    base = {
        "model_name_or_path": "sam3-tiny",
        "resolution": 56,
        "dataset_path": str(data),
        "synthetic_num_images": 6,
        "synthetic_image_size": [64, 64],
        "output_dir": str(out),
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "eval_on_start": False,
        "freeze_vision_encoder": True,
        "freeze_text_encoder": True,
        "hard_negatives": True,
        "hflip_prob": 0.5,
        "color_jitter": 0.0,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "log_images": 0,
    }
    base.update(kw)
    return base


def argv(values: dict) -> list[str]:
    return recipe_argv(DEMO_YAML, values)


class EncoderCalls:
    """Counts forward calls of SAM3's ViT and of its CLIP text encoder."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vision_calls = ForwardCalls(monkeypatch, modeling_sam3.Sam3VisionModel)
        self.text_calls = ForwardCalls(monkeypatch, modeling_clip.CLIPTextModelWithProjection)

    @property
    def counts(self) -> tuple[int, int]:
        return self.vision_calls.n, self.text_calls.n

    def reset(self) -> None:
        self.vision_calls.n = self.text_calls.n = 0


@pytest.fixture()
def recorded_losses(monkeypatch):
    """Training losses of every forward call, in order."""
    return record_training_losses(monkeypatch, Sam3ForTraining)


@pytest.fixture()
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def initial_model(tmp_path: Path, data: Path, **kw) -> tuple[dict, set[str], float]:
    """The weights a run starts from (seeded), the keys it trains and its (constant) lr."""
    cfg = load_config(Sam3Config, DEMO_YAML, overrides(tmp_path / "init", data, **kw))
    assert cfg.lr_scheduler_type == "constant" and cfg.warmup_steps == 0
    model = Sam3Task().build_base(cfg)[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, trainable_keys(model), cfg.learning_rate


def assert_cached_features_are_encoder_output(tmp_path: Path, autocast: torch.dtype | None, **kw):
    """The image features in the cache (the one a run trained on: same key, reused) are the ViT
    on exactly each sample's pixels, one image, same autocast: the same computation, bitwise."""
    folders = sorted((tmp_path / "data" / CACHE_DIRNAME).iterdir())
    _, _, module, _, train, _ = build(tmp_path, cache_embeddings=True, **kw)
    assert isinstance(train, CachedEmbeddingDataset) and train.cache.dir in folders
    assert sorted((tmp_path / "data" / CACHE_DIRNAME).iterdir()) == folders  # reused
    assert_features_match_encoder(module, train, autocast)


def test_cached_sam3_training_equals_uncached_and_reuses_the_cache(
    tmp_path, monkeypatch, recorded_losses
):
    data = tmp_path / "data"
    calls = EncoderCalls(monkeypatch)
    sam3_coco_text.main(argv(overrides(tmp_path / "plain", data, cache_embeddings=False)))
    plain = list(recorded_losses)
    assert min(calls.counts) > 0
    assert not (data / CACHE_DIRNAME).exists()

    recorded_losses.clear()
    sam3_coco_text.main(argv(overrides(tmp_path / "cached", data, cache_embeddings=True)))
    cached = list(recorded_losses)
    # cached vs uncached: two computations (the heads read the cached maps in another memory
    # layout; the phrase rows come from a batched text-encoder pass). Measured worst 9.5e-8
    # relative with the two runs under different ATen kernels -- 10.063851356 vs 10.063852310,
    # exactly the EPYC report; FP32_LOSS_RTOL = 16 ulp = 1.9e-6 (20x margin).
    assert len(plain) == 4
    assert_losses_close(cached, plain, rel=FP32_LOSS_RTOL)
    init, trainable, lr = initial_model(tmp_path, data)
    # frozen ViT and text encoder bitwise; the trained heads after 4 AdamW steps at lr 1e-3:
    # elementwise within lr x steps = 4e-3 (measured worst 4.3e-5: 92x margin) and ||a - b||
    # within 1e-2 of ||a - init|| (measured worst 1.6e-4: 64x margin)
    assert_trained_weights_close(
        weights(tmp_path / "plain"), weights(tmp_path / "cached"), init, trainable, lr=lr, steps=4
    )
    folders = sorted((data / CACHE_DIRNAME).iterdir())
    families = sorted(json.loads((f / "key.json").read_text())["family"] for f in folders)
    assert families == ["sam3", "sam3", "sam3-text"]  # train images, eval images, phrases
    assert_cached_features_are_encoder_output(tmp_path, None)

    # A rerun finds everything cached: neither encoder runs, in training or in evaluation.
    calls.reset()
    recorded_losses.clear()
    sam3_coco_text.main(argv(overrides(tmp_path / "again", data, cache_embeddings=True)))
    assert calls.counts == (0, 0)
    # the same computation as the first cached run (same cache files, same kernels): bitwise
    assert recorded_losses == cached


def test_cached_sam3_bf16_equals_uncached_bf16(tmp_path, recorded_losses, fresh_accelerate_state):
    """Under mixed precision the cache is filled under the same autocast: the stored maps are
    bitwise the uncached forward's, and training equals uncached training up to bf16 rounding."""
    data = tmp_path / "data"
    kw = {"bf16": True, "max_steps": 3}
    sam3_coco_text.main(argv(overrides(tmp_path / "plain", data, cache_embeddings=False, **kw)))
    plain = list(recorded_losses)
    recorded_losses.clear()
    sam3_coco_text.main(argv(overrides(tmp_path / "cached", data, cache_embeddings=True, **kw)))
    # measured worst 1.7e-3 relative (two ATen kernels); BF16_LOSS_RTOL = 4 bf16 eps = 3.1e-2
    # (18x margin)
    assert len(plain) == 3
    assert_losses_close(recorded_losses, plain, rel=BF16_LOSS_RTOL)
    init, trainable, lr = initial_model(tmp_path, data, **kw)
    # bf16: the trained weights are only bounded by AdamW (measured worst 5.9e-3 after 3 steps
    # at lr 1e-3; two opposite steps of <= 1.004 lr each, plus weight decay: 2.5 x lr x steps);
    # the frozen encoders stay bitwise (see test_cached_bf16_training_equals_uncached_bf16)
    assert_trained_weights_close(
        weights(tmp_path / "plain"),
        weights(tmp_path / "cached"),
        init,
        trainable,
        lr=lr,
        steps=3,
        per_step=2.5,
        update_rtol=None,
    )
    stored = next((data / CACHE_DIRNAME).glob("*/000000_n.safetensors"))
    assert {t.dtype for t in load_file(str(stored)).values()} == {torch.bfloat16}
    assert_cached_features_are_encoder_output(tmp_path, torch.bfloat16, **kw)


def test_cached_sam3_resume_equals_straight_run(tmp_path):
    data = tmp_path / "data"
    straight = overrides(tmp_path / "straight", data, cache_embeddings=True, max_steps=5)
    sam3_coco_text.main(argv(straight))
    part = overrides(
        tmp_path / "resumed",
        data,
        cache_embeddings=True,
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
    )
    sam3_coco_text.main(argv(part))
    rest = overrides(
        tmp_path / "resumed",
        data,
        cache_embeddings=True,
        max_steps=5,
        resume_from_checkpoint="true",
    )
    sam3_coco_text.main(argv(rest))
    # the same run, resumed from its own checkpoint (same cache, kernels, RNG states): bitwise
    assert_same_state_dict(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))


def build(tmp_path: Path, **kw):
    cfg = load_config(Sam3Config, DEMO_YAML, overrides(tmp_path / "run", tmp_path / "data", **kw))
    task = Sam3Task()
    task.prepare_data(cfg)
    module, processor = task.build_model(cfg)
    train, evals = task.build_datasets(cfg, processor)
    return cfg, task, module, processor, train, evals


def test_every_phrase_the_sampler_draws_is_in_the_phrase_cache(tmp_path):
    cfg, task, module, _, train, evals = build(tmp_path, cache_embeddings=True)
    table = module.text_cache.table
    drawn: set[str] = set()
    sources: set[str] = set()
    for ds, is_train in ((train.base, True), (evals.base, False)):
        for epoch in range(4):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                for q in sample_queries(
                    ds[i], task.vocab, 1.0, cfg.max_phrases_per_image, True, train=is_train
                ):
                    drawn.add(q.phrase)
                    sources.add(q.source)
    assert drawn <= set(table)
    assert sources == {"positive", "attribute", "vocab", "annotated"}
    # the features stored for a phrase are the text encoder's valid token rows
    tok = task.tokenizer
    phrase = sorted(drawn)[0]
    enc = tok([phrase], padding="max_length", max_length=32, return_tensors="pt")
    with torch.no_grad():
        want = module.model.get_text_features(**enc).pooler_output[0]
    n = int(enc["attention_mask"].sum())
    # the table comes from a batched text-encoder pass, this from one phrase: two computations.
    # Features <= 1.7; measured 0 in one process, 5.4e-7 for the text encoder under two ATen
    # kernels: atol 1e-5 (~80 ulp) is a 19x margin
    torch.testing.assert_close(table[phrase], want[:n], rtol=0, atol=1e-5)


def test_candidate_phrases_covers_hard_negatives_of_each_image():
    rows = [
        {
            "objects": [
                {
                    "noun_phrase": "ripe red apple",
                    "category": "apple",
                    "attributes": {"keys": ["color"], "values": ["red"]},
                    "iscrowd": False,
                }
            ],
            "negative_phrases": ["Pear"],
        },
        {
            "objects": [
                {
                    "noun_phrase": "green apple",
                    "category": "apple",
                    "attributes": {"keys": ["color"], "values": ["green"]},
                    "iscrowd": False,
                }
            ],
            "negative_phrases": [],
        },
    ]
    vocab = PhraseVocab.from_rows(rows)
    got = candidate_phrases(rows, vocab, hard_negatives=True)
    assert {"ripe red apple", "green apple", "pear"} <= got
    assert {"ripe green apple", "red apple"} <= got  # the attribute swaps
    assert "ripe green apple" not in candidate_phrases(rows, vocab, hard_negatives=False)


def test_a_phrase_missing_from_the_cache_is_encoded_on_the_spot(tmp_path):
    _, task, module, _, train, _ = build(tmp_path, cache_embeddings=True)
    features = module.text_cache
    assert "a purple giraffe" not in features.table
    collate = task.collator(load_config(Sam3Config, DEMO_YAML, overrides(tmp_path, tmp_path)), True)
    batch = collate([train[0], train[1]])
    phrases = ["a purple giraffe", *batch["phrases"][1:]]
    enc = task.tokenizer(phrases, padding="max_length", max_length=32, return_tensors="pt")
    batch.update(phrases=phrases, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    cached = module.text_features(batch).pooler_output
    with torch.no_grad():
        direct = module.model.get_text_features(**enc).pooler_output
    valid = enc["attention_mask"].bool()
    # cache rows (batched pass) + one phrase encoded with others vs one batch: as above, atol 1e-5
    torch.testing.assert_close(cached[valid], direct[valid], rtol=0, atol=1e-5)
    assert torch.all(cached[~valid] == 0)
    assert features.num_computed == 1 and "a purple giraffe" in features.table


def test_sam3_cache_follows_the_freeze_flags(tmp_path):
    _, task, module, _, train, _ = build(tmp_path, freeze_text_encoder=False)  # auto
    assert task.cache_on and isinstance(train, CachedEmbeddingDataset)
    assert module.text_cache is None  # the text encoder trains
    _, task, module, _, train, _ = build(tmp_path, freeze_vision_encoder=False)
    assert not task.cache_on and not isinstance(train, CachedEmbeddingDataset)
    assert isinstance(module.text_cache, PhraseFeatures)
    _, task, module, _, _, _ = build(tmp_path, cache_embeddings=False)
    assert not task.cache_on and module.text_cache is None
    values = {"use_lora": True, "lora_target_groups": ["text_encoder", "detr_decoder"]}
    cfg = load_config(Sam3Config, DEMO_YAML, overrides(tmp_path, tmp_path, **values))
    assert text_cache_blockers(cfg) == ["LoRA adapters in the text encoder train it"]
    assert cache_blockers(cfg) == []


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"freeze_vision_encoder": False}, "freeze_vision_encoder is false"),
        (
            {"use_lora": True, "lora_target_groups": ["vision_encoder"]},
            "LoRA on an encoder whose features are cached",
        ),
        ({"color_jitter": 0.1}, "color_jitter 0.1 > 0"),
    ],
)
def test_impossible_sam3_cache_settings_are_config_errors(tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        load_config(
            Sam3Config, DEMO_YAML, overrides(tmp_path, tmp_path, cache_embeddings=True, **kw)
        )


def test_phrase_cache_key_ignores_the_data_but_follows_the_text_weights(tmp_path):
    root = tmp_path / "data" / CACHE_DIRNAME

    def text_folders() -> list[Path]:
        return [d for d in root.iterdir() if "sam3-text" in (d / "key.json").read_text()]

    build(tmp_path, cache_embeddings=True)
    build(tmp_path, cache_embeddings=True, max_train_samples=2)  # other data, same phrases
    assert len(text_folders()) == 1
    build(tmp_path, cache_embeddings=True, seed=3)  # another random init of the text encoder
    assert len(text_folders()) == 2


def _launch_two_ranks(values: dict) -> None:
    """The SAM3 recipe in two real CPU processes (gloo DDP). torchrun starts them as
    ``accelerate launch --multi_gpu`` would on GPUs; ``ACCELERATE_USE_CPU`` is what
    ``accelerate launch --cpu`` sets (without it a CPU-only machine runs two separate runs)."""
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        str(ROOT / "recipes" / "sam3_coco_text.py"),
        *argv(values),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    env["ACCELERATE_MIXED_PRECISION"] = "no"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # two real ranks (torchrun)
def test_two_ranks_fill_the_cache_once_and_train_like_uncached(tmp_path):
    """Rank 0 fills the image and phrase caches while rank 1 waits (main_process_first); both
    then train from them, and the DDP run ends with the uncached DDP run's weights."""
    data = tmp_path / "data"
    prepare = overrides(
        tmp_path / "prep", data, cache_embeddings=False, per_device_train_batch_size=1
    )
    Sam3Task().prepare_data(load_config(Sam3Config, DEMO_YAML, prepare))  # data made once
    for name, mode in (("plain", False), ("cached", True)):
        values = overrides(
            tmp_path / name, data, cache_embeddings=mode, per_device_train_batch_size=1
        )
        _launch_two_ranks({**values, "max_steps": 2})
    init, trainable, lr = initial_model(tmp_path, data, per_device_train_batch_size=1)
    # cached vs uncached (two computations), 2 AdamW steps at lr 1e-3: elementwise within
    # lr x steps = 2e-3 (measured worst 3.6e-5 with the runs under different ATen kernels: 56x
    # margin), ||a - b|| within 1e-2 of ||a - init|| (measured worst 1.9e-4: 52x margin)
    assert_trained_weights_close(
        weights(tmp_path / "plain"), weights(tmp_path / "cached"), init, trainable, lr=lr, steps=2
    )
    folders = sorted((data / CACHE_DIRNAME).iterdir())
    assert len(folders) == 3
    images = [f for f in folders if (f / "key.json").is_file() and (f / "complete.json").is_file()]
    assert len(images) == 2  # train and eval images, each completed once
    assert not list(data.glob(f"{CACHE_DIRNAME}/*/.tmp-*"))  # no half-written files


def test_a_batch_without_queries_backpropagates_with_cached_encoders(tmp_path):
    """An image with no phrase and no negative gives no query; with both encoders cached
    nothing in the batch has autograd, yet the zero loss must still reach every trainable
    parameter (DDP waits for all of them)."""
    cfg, task, module, _, train, _ = build(tmp_path, cache_embeddings=True)
    batch = task.collator(cfg, True)([train[0]])
    batch["query_image"] = torch.zeros(0, dtype=torch.long)
    module.train()
    out = module(batch)
    out["loss"].backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert out["loss"].item() == 0.0 and out["num_queries"] == 0 and trainable
    assert all(p.grad is not None and not p.grad.any() for p in trainable)


def test_cached_features_with_a_trainable_encoder_are_refused(tmp_path):
    """Unfreezing the encoder after the cache was built must fail loudly, not train nothing."""
    cfg, task, module, _, train, _ = build(tmp_path, cache_embeddings=True)
    batch = task.collator(cfg, True)([train[0], train[1]])
    module.train()
    module.model.vision_encoder.requires_grad_(True)
    with pytest.raises(RuntimeError, match="image encoder is trainable: it would silently not"):
        module(batch)
