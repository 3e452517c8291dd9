"""SAM3's tracker head (``Sam3TrackerModel``) trained by the SAM2 task code: what a user relies on.

1. The training wrapper predicts what transformers' own inference path predicts for the same
   prompts (processor + ``Sam3TrackerModel(**inputs)`` + ``post_process_masks``).
2. Gradients reach exactly the parts the freeze flags leave trainable.
3. Resume from a checkpoint equals the uninterrupted run; cached encoder features train as the
   encoder does.
4. The recipe writes transformers' layout, and ``final/`` reloads with plain transformers.
5. LoRA on the tracker trains adapters only and merges into a plain Sam3TrackerModel.

Tiny random models (``sam3-tracker-tiny``, 133 k parameters) at 56 px on a few synthetic
orchard images. Tolerances follow tests/equality.py: bitwise only for the same computation.
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Sam3TrackerModel, Sam3TrackerProcessor

from sam_hf.config import Sam3TrackerConfig, load_config
from sam_hf.features.dataset import CachedEmbeddingDataset
from sam_hf.features.keys import CACHE_DIRNAME
from sam_hf.models import lora
from sam_hf.models.sam2_training import Sam2ForTraining
from sam_hf.models.sam3_tracker import build_sam3_tracker
from sam_hf.tasks.sam3_tracker import Sam3TrackerTask

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import sam3_tracker_mineapple  # noqa: E402
from equality import (  # noqa: E402
    FP32_LOSS_RTOL,
    assert_losses_close,
    assert_same_state_dict,
    assert_trained_weights_close,
    trainable_keys,
)
from recipe_runs import ForwardCalls, recipe_argv, record_training_losses  # noqa: E402
from test_lora import lora_cfg, sam2_loss, train_steps  # noqa: E402

DEMO_YAML = ROOT / "recipes" / "sam3_tracker_demo.yaml"
RES = 56  # 4 x 4 ViT tokens (patch 14); low-res masks 16 x 16
#: Trainable parameters that no prediction reads, so no gradient ever reaches them. In
#: transformers' Sam3TrackerModel.forward (and so in Sam2ForTraining.encoder_features) the
#: no-memory offset is added to the ViT neck's 4th FPN level (0.5x), and that level is then
#: dropped by the zip with the three backbone_feature_sizes: the offset and the layers that
#: compute the 0.5x map never influence a mask. (Meta's tracker adds the offset to the 1x map.)
UNREACHED = (
    "model.no_memory_embedding",
    "model.vision_encoder.neck.fpn_layers.3.",
)


def tracker(seed: int = 0, **kw):
    cfg = load_config(
        Sam3TrackerConfig,
        None,
        {"model_name_or_path": "sam3-tracker-tiny", "resolution": RES, "seed": seed, **kw},
    )
    model, processor = build_sam3_tracker(cfg)
    return cfg, model.eval(), processor


def overrides(out: Path, data: Path, **kw) -> dict:
    """The demo recipe at test scale: tiny random tracker at 56 px, 6 orchard images."""
    base = {
        "model_name_or_path": "sam3-tracker-tiny",
        "resolution": RES,
        "dataset_path": str(data),
        "synthetic_num_images": 6,
        "synthetic_image_size": [64, 64],
        "output_dir": str(out),
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "max_objects_per_image": 4,
        "logging_steps": 1,
        "eval_on_start": False,
        "eval_steps": 2,
        "save_steps": 2,
        "max_eval_samples": 2,
        "color_jitter": 0.0,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "log_images": 0,
        "bf16": False,
    }
    base.update(kw)
    return base


def run_recipe(values: dict) -> dict:
    return sam3_tracker_mineapple.main(recipe_argv(DEMO_YAML, values))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The synthetic orchard, generated once through the task's own path."""
    root = tmp_path_factory.mktemp("tracker_data")
    cfg = load_config(Sam3TrackerConfig, DEMO_YAML, overrides(root / "unused", root / "data"))
    Sam3TrackerTask().prepare_data(cfg)
    return root / "data"


# ------------------------------------------------------------ 1. wrapper == transformers


def image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


def dataset_pixels(img: Image.Image, processor) -> torch.Tensor:
    """The dataset's transform (sam_hf.data.transforms): PIL bilinear squash, / 255, normalise."""
    ip = processor.image_processor
    x = torch.from_numpy(np.asarray(img.resize((RES, RES), Image.BILINEAR), np.float32) / 255.0)
    mean, std = torch.tensor(ip.image_mean), torch.tensor(ip.image_std)
    return ((x.permute(2, 0, 1) - mean[:, None, None]) / std[:, None, None])[None]


def transformers_path(model, processor, img, point=None, box=None):
    """Processor + Sam3TrackerModel(**inputs) + post_process_masks, as transformers documents
    it; single-mask calls without the eval-only stability swap (the wrapper's documented
    choice, sam_hf/models/sam2_training.py)."""
    kw = {}
    if point is not None:
        kw.update(input_points=[[[point]]], input_labels=[[[1]]])
    if box is not None:
        kw["input_boxes"] = [[box]]
    inputs = processor(images=img, return_tensors="pt", **kw)
    dec = model.mask_decoder
    saved, dec.dynamic_multimask_via_stability = dec.dynamic_multimask_via_stability, False
    try:
        with torch.no_grad():
            out = model(**inputs, multimask_output=box is None)
    finally:
        dec.dynamic_multimask_via_stability = saved
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0]
    best = int(out.iou_scores[0, 0].argmax())
    return inputs, out, masks[best], best


def wrapper_prompt(inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's (model-frame) prompt as Sam2ForTraining takes it: box corners as points
    labelled 2/3 (what the collator and predict.py feed), then the clicks."""
    pts, labs = [], []
    if "input_boxes" in inputs:
        pts.append(inputs["input_boxes"][0, 0].view(2, 2))
        labs.append(torch.tensor([2, 3]))
    if "input_points" in inputs:
        pts.append(inputs["input_points"][0, 0])
        labs.append(inputs["input_labels"][0, 0].long())
    return torch.cat(pts)[None], torch.cat(labs)[None]


def predict_batch(pixel_values, prompts, size) -> dict:
    """A one-image Sam2Collator-style batch carrying ``prompts`` [(points, labels)]."""
    k, n = len(prompts), max(p.shape[1] for p, _ in prompts)
    points, labels = torch.zeros(1, k, n, 2), torch.full((1, k, n), -10, dtype=torch.long)
    for j, (p, lab) in enumerate(prompts):
        points[0, j, : p.shape[1]], labels[0, j, : p.shape[1]] = p[0], lab[0]
    return {
        "pixel_values": pixel_values,
        "object_valid": torch.ones(1, k, dtype=torch.bool),
        "masks": torch.zeros(1, k, RES, RES, dtype=torch.bool),
        "input_points": points,
        "input_labels": labels,
        "num_prompt_points": torch.tensor([[p.shape[1] for p, _ in prompts]]),
        "object_ids": torch.arange(k)[None],
        "image_ids": ["img"],
        "orig_sizes": [size],
    }


PROMPTS = {"point": (0.4, 0.6, None), "box": (None, None, (0.2, 0.25, 0.7, 0.8))}
PROMPTS["point+box"] = (0.4, 0.6, PROMPTS["box"][2])


def scaled(name: str, h: int, w: int):
    x, y, box = PROMPTS[name]
    point = None if x is None else [x * w, y * h]
    return point, None if box is None else [box[0] * w, box[1] * h, box[2] * w, box[3] * h]


@pytest.mark.parametrize("name", list(PROMPTS))
def test_wrapper_decode_equals_transformers_forward_on_the_same_pixels(name):
    """Given the processor's own pixel values and prompt, Sam2ForTraining's encoder features
    + decode give transformers' low-res logits, IoU and object scores. Measured: bitwise for a
    point and a box (the same kernels on the same bits); point+box 5.2e-8 on logits and 1.5e-8
    on the object score (the wrapper puts the box tokens first, transformers last: attention
    over the tokens is order-free up to summation order). atol 1e-5: a 190x margin."""
    cfg, model, processor = tracker()
    wrapper = Sam2ForTraining(model, cfg).eval()
    img = image(40, 70)
    inputs, out, _, _ = transformers_path(model, processor, img, *scaled(name, 40, 70))
    points, labels = wrapper_prompt(inputs)
    with torch.no_grad():
        emb = wrapper.image_embeddings(inputs["pixel_values"])
        low, ious, scores = wrapper.decode(
            emb, torch.tensor([0]), points, labels, None, points.shape[1] == 1
        )
    assert low.shape == out.pred_masks[:, 0].shape
    for got, want in ((low, out.pred_masks[:, 0]), (ious, out.iou_scores[:, 0])):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores, out.object_score_logits[:, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(RES, RES), (40, 70)])
def test_predict_masks_equal_post_processed_masks(size):
    """Sam2ForTraining.predict on the dataset's pixels vs the whole transformers pipeline.

    Both take the mask with the highest predicted IoU and upsample the 16 x 16 logits once,
    bilinearly, to the image size; a pixel can only flip where |logit| is below the logits'
    difference, so masks are compared outside |logit| < tol. At the model's own size the
    transforms differ only in x / 255 vs x * (1 / 255) (measured 5.9e-8 in pixel values,
    9.3e-8 in logits, 0 mask pixels): tol 1e-5, a 100x margin. At 40 x 70 the processor's
    resize and PIL's differ by up to 2/255 (measured 7.8e-3 in pixel values, 1.6e-3 in
    logits on this model's logits <= 0.2; up to 3 of 2,800 mask pixels differ, all at
    |logit| <= 2.2e-4): tol 2e-2, a 12x margin.
    """
    h, w = size
    tol = 1e-5 if size == (RES, RES) else 2e-2
    cfg, model, processor = tracker()
    wrapper = Sam2ForTraining(model, cfg).eval()
    img = image(h, w, seed=3)
    runs = [transformers_path(model, processor, img, *scaled(n, h, w)) for n in PROMPTS]
    batch = predict_batch(
        dataset_pixels(img, processor), [wrapper_prompt(r[0]) for r in runs], size
    )
    (pred,) = wrapper.predict(batch)
    emb = wrapper.image_embeddings(batch["pixel_values"])
    for j, (inputs, out, want, best) in enumerate(runs):
        p, lab = wrapper_prompt(inputs)
        with torch.no_grad():
            low, ious, _ = wrapper.decode(emb, torch.tensor([0]), p, lab, None, p.shape[1] == 1)
        torch.testing.assert_close(low, out.pred_masks[:, 0], atol=tol, rtol=0)
        assert float(pred["scores"][j]) == pytest.approx(float(ious[0].max()), abs=1e-6)
        assert int(ious[0].argmax()) == best  # the same of the 3 masks is chosen
        logit = F.interpolate(low[:, best : best + 1], size=size, mode="bilinear")[0, 0]
        differ = pred["pred_masks"][j] != want
        assert pred["pred_masks"][j].shape == want.shape == size
        assert not differ[logit.abs() > tol].any(), f"{int(differ.sum())} confident pixels differ"


def test_no_memory_embedding_reaches_no_prediction():
    """transformers adds no_memory_embedding to the 0.5x FPN map and drops that map; the
    wrapper does the same. With a non-zero offset both paths still agree (measured: bitwise;
    atol 1e-5 as above) and the masks are bitwise those of a zero offset: the parameter is
    inert in this model (Meta's tracker adds it to the 1x map; a converted sam3.pt's offset
    has no effect here). The wrapper keeps the three maps the decoder reads."""
    cfg, model, processor = tracker()
    wrapper = Sam2ForTraining(model, cfg).eval()
    img = image(RES, RES)
    point, _ = scaled("point", RES, RES)
    zero = transformers_path(model, processor, img, point)[1].pred_masks
    with torch.no_grad():
        model.no_memory_embedding.normal_(std=3.0)
    inputs, out, _, _ = transformers_path(model, processor, img, point)
    p, lab = wrapper_prompt(inputs)
    with torch.no_grad():
        low, _, _ = wrapper.decode(
            wrapper.image_embeddings(inputs["pixel_values"]), torch.tensor([0]), p, lab, None, True
        )
    torch.testing.assert_close(low, out.pred_masks[:, 0], atol=1e-5, rtol=0)
    assert torch.equal(out.pred_masks, zero)
    feats = wrapper.encoder_features(inputs["pixel_values"])
    assert [f.shape[-1] for f in feats] == [4 * RES // 14, 2 * RES // 14, RES // 14]


# ------------------------------------------------------------------------- 2. gradients


FLAGS = ("freeze_image_encoder", "freeze_prompt_encoder", "freeze_mask_decoder")
PARTS = {  # what each flag freezes (the no-memory offset goes with the encoder)
    "freeze_image_encoder": ("model.vision_encoder.", "model.no_memory_embedding"),
    "freeze_prompt_encoder": ("model.prompt_encoder.",),
    "freeze_mask_decoder": ("model.mask_decoder.",),
}


COMBOS = [c for c in itertools.product([False, True], repeat=3) if not all(c)]


@pytest.mark.parametrize(
    "frozen",
    COMBOS,
    ids=["frozen-" + ("+".join(f.split("_", 1)[1] for f, x in zip(FLAGS, c) if x) or "none")
         for c in COMBOS],
)  # fmt: skip
def test_gradients_reach_exactly_the_unfrozen_parts(frozen, data, tmp_path):
    """One training forward + backward (mixed point/box prompts, a correction click, mask
    prompts): every trainable parameter gets a gradient, every frozen one none -- except
    UNREACHED, which no prediction reads (no gradient even when trainable)."""
    flags = dict(zip(FLAGS, frozen))
    kw = dict(prompt_type="mixed", num_correction_clicks=1, mask_prompt_prob=0.5, **flags)
    cfg = load_config(Sam3TrackerConfig, DEMO_YAML, overrides(tmp_path, data, **kw))
    task = Sam3TrackerTask()
    module, processor = task.build_model(cfg)
    train, _ = task.build_datasets(cfg, processor)
    batch = task.collator(cfg, True)([train[0], train[1]])
    assert batch["has_box"].any() and (~batch["has_box"]).any() and batch["mask_prompt"].any()
    module.train()
    module(batch)["loss"].backward()
    no_grad, stray = [], []
    for name, p in module.named_parameters():
        part = next((f for f, pre in PARTS.items() if name.startswith(pre)), None)
        trainable = not flags.get(part, False)
        assert p.requires_grad == trainable, name
        if name.startswith(UNREACHED):
            assert p.grad is None, f"{name} now reaches a prediction: update UNREACHED"
        elif trainable and p.grad is None:
            no_grad.append(name)
        elif not trainable and p.grad is not None:
            stray.append(name)
    assert not no_grad and not stray, (no_grad, stray)
    assert any(p.requires_grad for p in module.parameters())


# --------------------------------------------------- 3-4. the recipe, resume and the cache


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The demo recipe at test scale, 4 steps, checkpoints at 2 and 4, the encoder training;
    with the training module it ended with (kept in memory)."""
    out = tmp_path_factory.mktemp("tracker_run") / "straight"
    built = []
    original = Sam3TrackerTask.build_model

    def build_model(self, cfg):
        module, processor = original(self, cfg)
        built.append(module)
        return module, processor

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Sam3TrackerTask, "build_model", build_model)
        results = run_recipe(overrides(out, data, freeze_image_encoder=False))
    return out, results, built[-1]


def test_recipe_writes_transformers_layout_and_final_reloads(straight):
    """checkpoint-N/, trainer_state.json and final/; final/ loads with Sam3TrackerModel and
    Sam3TrackerProcessor and predicts what the trained in-memory model predicts. The weights
    are the same bits (save/load copies them); the forward runs on from_pretrained's
    differently aligned weights (tests/equality.py): measured worst 6.0e-8 on logits <= 0.2,
    atol 1e-6 (17x margin); the thresholded masks agree bitwise here."""
    out, results, module = straight
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == results["global_step"] == 4
    model = Sam3TrackerModel.from_pretrained(out / "final").eval()
    processor = Sam3TrackerProcessor.from_pretrained(out / "final")
    assert_same_state_dict(model.state_dict(), module.model.state_dict())
    assert processor.image_processor.size == {"height": RES, "width": RES}
    assert model.config.vision_config.backbone_config.image_size == RES
    img = image(40, 70, seed=5)
    for name in PROMPTS:
        _, got, got_mask, _ = transformers_path(model, processor, img, *scaled(name, 40, 70))
        inputs, want, want_mask, _ = transformers_path(
            module.model.eval(), processor, img, *scaled(name, 40, 70)
        )
        torch.testing.assert_close(got.pred_masks, want.pred_masks, atol=1e-6, rtol=0)
        assert torch.equal(got_mask, want_mask)
    trained, initial = model.state_dict(), tracker()[1].state_dict()
    for key in (
        "mask_decoder.conv_s0.weight",
        "vision_encoder.backbone.layers.0.attention.q_proj.weight",
    ):
        assert not torch.equal(trained[key], initial[key]), key  # decoder and encoder trained


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    """final/'s weights under the model's own names: transformers writes a Sam3TrackerModel
    under the sam3_video checkpoint's names (tracker_model.*, the ViT under
    tracker_model.detector_model.*) and maps them back on load."""
    return Sam3TrackerModel.from_pretrained(out / "final").state_dict()


def test_init_from_a_tracker_fine_tune_loads_its_weights(straight, data, tmp_path):
    """init_from final/ of a tracker run starts from its weights, bit for bit (a fix: the raw
    safetensors keys are the sam3_video names, which fitted no key of the model)."""
    out, _, module = straight
    cfg = load_config(
        Sam3TrackerConfig, DEMO_YAML, overrides(tmp_path, data, init_from=str(out / "final"))
    )
    started, _ = Sam3TrackerTask().build_model(cfg)
    assert_same_state_dict(started.model.state_dict(), module.model.state_dict())


def test_resume_from_checkpoint_equals_the_straight_run(straight, data, tmp_path):
    """A run stopped after checkpoint-2 (the straight run's own checkpoint-2, copied) and
    resumed to step 4 ends with the straight run's weights, bit for bit: the same
    computation (same kernels, restored optimizer, scheduler, RNG and data order)."""
    out, _, _ = straight
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    results = run_recipe(
        overrides(resumed, data, freeze_image_encoder=False, resume_from_checkpoint="true")
    )
    assert results["global_step"] == 4
    assert_same_state_dict(final_weights(out), final_weights(resumed))


def cached_build(tmp_path: Path, data: Path, **kw):
    cfg = load_config(Sam3TrackerConfig, DEMO_YAML, overrides(tmp_path, data, **kw))
    task = Sam3TrackerTask()
    module, processor = task.build_model(cfg)
    train, _ = task.build_datasets(cfg, processor)
    return cfg, task, module, train


def test_cached_features_give_the_uncached_loss_and_gradients(data, tmp_path):
    """With a frozen encoder and no colour jitter, one training step from cached features
    equals the step through the encoder. The cache stores the encoder's own output for the
    augmented sample (one image at a time), the uncached batch encodes both images at once
    (tests/equality.py: batch 1 vs batch 2 may round differently). Measured: the same loss
    bits, gradients within 1.8e-7; rtol FP32_LOSS_RTOL on the loss, atol 2e-6 + rtol 1e-5 on
    gradients (11x margin on the absolute part alone)."""
    kw = {"freeze_image_encoder": True, "cache_embeddings": True, "num_correction_clicks": 1}
    cfg, task, module, train = cached_build(tmp_path, data, **kw)
    assert isinstance(train, CachedEmbeddingDataset) and task.cache_on
    batch = task.collator(cfg, True)([train[0], train[1]])
    assert len(batch["image_embeddings"]) == 3
    plain = {k: v for k, v in batch.items() if k != "image_embeddings"}
    module.train()
    grads = []
    for b in (batch, plain):
        module.zero_grad(set_to_none=True)
        loss = module(b)["loss"]
        loss.backward()
        grads.append(
            (
                float(loss),
                {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None},
            )
        )
    (cached_loss, cached), (plain_loss, uncached) = grads
    assert cached_loss == pytest.approx(plain_loss, rel=FP32_LOSS_RTOL)
    assert cached.keys() == uncached.keys() and cached
    assert not any(k.startswith("model.vision_encoder.") for k in cached)
    for k in cached:
        torch.testing.assert_close(cached[k], uncached[k], atol=2e-6, rtol=1e-5)


@pytest.mark.slow  # three recipe runs; the one-step test above covers the cache by default
def test_cached_recipe_run_equals_uncached(data, tmp_path, monkeypatch):
    """Two runs of the recipe, cache on and off (frozen encoder, colour jitter 0, batch 1 so
    the encoder sees single images either way): the same loss at every step up to
    FP32_LOSS_RTOL (measured: bitwise equal losses), and the final weights per
    assert_trained_weights_close (lr x steps = 4e-3 elementwise; measured worst 2.4e-5: 165x
    margin); a second cached run never calls the encoder and repeats the losses bitwise (the
    same cache files, the same computation)."""
    from transformers.models.sam3 import modeling_sam3

    losses = record_training_losses(monkeypatch, Sam2ForTraining)
    calls = ForwardCalls(monkeypatch, modeling_sam3.Sam3VisionModel)
    kw = {"freeze_image_encoder": True, "per_device_train_batch_size": 1}
    run_recipe(overrides(tmp_path / "plain", data, cache_embeddings=False, **kw))
    plain = list(losses)
    assert calls.n > 0 and len(plain) == 4
    losses.clear()
    run_recipe(overrides(tmp_path / "cached", data, cache_embeddings=True, **kw))
    assert (data / CACHE_DIRNAME).is_dir()
    assert_losses_close(losses, plain, rel=FP32_LOSS_RTOL)
    a, b = (final_weights(tmp_path / run) for run in ("plain", "cached"))
    cfg, _, module, _ = cached_build(tmp_path, data, **kw)
    init = {k: v.clone() for k, v in module.model.state_dict().items()}
    assert_trained_weights_close(
        a, b, init, trainable_keys(module.model), lr=cfg.learning_rate, steps=4
    )
    calls.n = 0
    cached = list(losses)
    losses.clear()
    run_recipe(overrides(tmp_path / "again", data, cache_embeddings=True, **kw))
    assert calls.n == 0 and losses == cached  # the same cache files, the same computation


# ------------------------------------------------------------------------------ 5. LoRA


def test_lora_on_encoder_and_decoder_trains_adapters_and_merges(tmp_path):
    """use_lora with groups [vision_encoder, mask_decoder]: the groups hit the ViT's and the
    two-way transformer's attention projections, only adapters and SAM2's heads train, and
    the merged model saves and reloads as a plain Sam3TrackerModel predicting the adapter
    model's masks (merged vs adapter formula, then reloaded weights: measured worst 1.1e-7
    on logits <= 0.17, atol 1e-6: 9x margin; the untouched base differs by 0.15)."""
    cfg, model, _ = tracker(seed=1)
    layers = model.config.vision_config.backbone_config.num_hidden_layers
    vision = lora.matching_modules(model, lora.target_regex("sam3_tracker", ["vision_encoder"]))
    decoder = lora.matching_modules(model, lora.target_regex("sam3_tracker", ["mask_decoder"]))
    assert len(vision) == 4 * layers and all(".attention." in n for n in vision)
    assert len(decoder) == 4 * (2 * 3 + 1) and all(
        n.startswith("mask_decoder.transformer.") for n in decoder
    )
    pm = lora.apply_lora(model, lora_cfg(), "sam3_tracker")
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        pixel_values=torch.randn(1, 3, RES, RES, generator=g),
        input_points=torch.rand(1, 2, 1, 2, generator=g) * RES,
        input_labels=torch.ones(1, 2, 1, dtype=torch.long),
    )
    train_steps(pm, inputs, sam2_loss, steps=4, multimask_output=False)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    changed = {n for n, p in pm.named_parameters() if not torch.equal(p, before[n])}
    assert trainable and all(lora.is_trainable_key(n) for n in trainable)
    assert changed <= trainable
    for group in ("vision_encoder.backbone.layers", "mask_decoder.transformer"):
        assert any(group in n and ".lora_B." in n for n in changed), group
    with torch.no_grad():
        want = pm(**inputs, multimask_output=True).pred_masks
    merged = lora.merge_to_base(copy.deepcopy(pm))
    assert type(merged) is Sam3TrackerModel
    merged.save_pretrained(tmp_path / "final")
    reloaded = Sam3TrackerModel.from_pretrained(tmp_path / "final").eval()
    assert_same_state_dict(merged.state_dict(), reloaded.state_dict())
    with torch.no_grad():
        got = reloaded(**inputs, multimask_output=True).pred_masks
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    with torch.no_grad():
        base = tracker(seed=1)[1](**inputs, multimask_output=True).pred_masks
    assert not torch.allclose(base, want, atol=1e-3)  # the adapters changed the masks
