"""Recipe configuration: flat dataclasses named as transformers' ``TrainingArguments``.

The keys a user shares with every HF training script keep ``TrainingArguments``' names and
meanings (``per_device_train_batch_size``, ``lr_scheduler_type``, ``eval_strategy``, ``bf16``
...), so a YAML or command line written for ``Trainer`` reads the same here; SAM-specific keys
sit beside them. The config is flat (``cfg.learning_rate``) because HfArgumentParser and the
recipe YAMLs are; the section classes only group keys for ``--help``. Validation runs in
``__post_init__``, so a config built in Python is checked exactly like one parsed from YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sam_hf.config.presets import apply_preset
from sam_hf.config.validate import validate

#: ``lr_scheduler_type`` values: transformers' ``get_scheduler`` builds each of them.
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_min_lr",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "warmup_stable_decay",
)


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse's name
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainingArgs:
    """The optimisation loop, checkpoints, evaluation schedule and logging (TrainingArguments'
    names and meanings)."""

    output_dir: str = _f("outputs/run", "Where checkpoint-N/, trainer_state.json and final/ go.")
    seed: int = _f(42, "Seeds model init, data order, augmentation and prompts.")
    num_train_epochs: int = _f(1, "Whole epochs to train (ignored when max_steps > 0).")
    max_steps: int = _f(-1, "Optimizer steps to train; > 0 overrides num_train_epochs.")
    per_device_train_batch_size: int = _f(2, "Images per device per training micro-batch.")
    per_device_eval_batch_size: int | None = _f(
        None, "Images per device at evaluation (default: per_device_train_batch_size)."
    )
    learning_rate: float = _f(1e-4, "Peak learning rate.")
    weight_decay: float = _f(0.01, "AdamW weight decay (never applied to biases and norms).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    optim: Literal["adamw_torch", "adamw_bnb_8bit"] = _f(
        "adamw_torch",
        "adamw_bnb_8bit: bitsandbytes 8-bit AdamW (pip install .[memory]; CPU and CUDA).",
    )
    lr_scheduler_type: Literal[SCHEDULERS] = _f(  # type: ignore[valid-type]
        "cosine",
        "transformers.get_scheduler schedule; reduce_lr_on_plateau steps on "
        "metric_for_best_model after each evaluation.",
    )
    lr_scheduler_kwargs: dict[str, Any] = _f(
        {},
        "Extra scheduler arguments, e.g. {min_lr_rate: 0.1} for cosine_with_min_lr or "
        "{factor: 0.5, patience: 2} for reduce_lr_on_plateau (patience in evaluations).",
    )
    warmup_steps: float = _f(
        0, "Linear warmup: an integer >= 1 is steps, a number in (0, 1) a fraction of all steps."
    )
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    bf16: bool | None = _f(
        None, "bfloat16 autocast; unset: what accelerate launch / accelerate config says."
    )
    fp16: bool | None = _f(
        None, "float16 autocast with loss scaling (CUDA only); unset: from accelerate."
    )
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 disables clipping.")
    gradient_checkpointing: bool = _f(False, "Recompute block activations in backward.")
    eval_strategy: Literal["no", "steps", "epoch"] = _f(
        "epoch", "When to evaluate: every eval_steps, at each epoch end, or never."
    )
    eval_steps: int | None = _f(None, "Evaluate every N optimizer steps (eval_strategy: steps).")
    eval_on_start: bool = _f(True, "Evaluate before training (the 'before' of the report).")
    save_strategy: Literal["no", "steps", "epoch"] = _f(
        "epoch", "When to write checkpoint-N/: every save_steps, at each epoch end, or never."
    )
    save_steps: int | None = _f(None, "Checkpoint every N optimizer steps (save_strategy: steps).")
    save_total_limit: int | None = _f(
        3, "checkpoint-N/ folders kept (the best one is never deleted); none: keep all."
    )
    load_best_model_at_end: bool = _f(
        False, "final/ holds the best evaluated weights instead of the last ones."
    )
    metric_for_best_model: str = _f(
        "mean_iou", "Validation metric that picks best/ (with or without the eval_ prefix)."
    )
    greater_is_better: bool = _f(True, "Whether a larger metric_for_best_model is better.")
    early_stopping_patience: int = _f(0, "Stop after N evaluations without improvement (0: off).")
    resume_from_checkpoint: str | None = _f(
        None, "true (newest complete checkpoint-N/ in output_dir) or a checkpoint path."
    )
    resume_ignore_config_mismatch: bool = _f(
        False,
        "Resume even if the checkpoint was trained with other result-changing settings (seed, "
        "model, data, prompts, loss, optimizer...); by default resuming refuses, listing them.",
    )
    init_from: str | None = _f(
        None, "Start from the weights of an earlier fine-tune (fresh optimizer and schedule)."
    )
    dataloader_num_workers: int = _f(0, "DataLoader worker processes.")
    dataloader_pin_memory: bool = _f(False, "DataLoader pin_memory (useful on GPU).")
    logging_steps: int = _f(10, "Log to training.log / trackers every N optimizer steps.")
    max_nonfinite_steps: int = _f(5, "Stop after this many non-finite losses in a row.")
    report_to: list[str] = _f(["none"], "Trackers: wandb, tensorboard, trackio or none.")
    run_name: str | None = _f(None, "Run name for trackers (default: output_dir's name).")
    wandb_project: str = _f("sam_hf", "wandb project.")


@dataclass
class LoraArgs:
    """Low-rank adapters through peft (the base weights stay frozen)."""

    use_lora: bool = _f(False, "Train LoRA adapters instead of the full weights.")
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA scaling alpha.")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA path.")
    lora_target_groups: list[str] = _f(
        ["vision_encoder", "mask_decoder"],
        "Named module groups: vision_encoder, text_encoder, mask_decoder, detr_decoder.",
    )
    lora_target_regex: str | None = _f(None, "Raw regex of module names (wins over groups).")
    merge_lora: bool = _f(False, "Also write the merged plain model to final/.")


@dataclass
class HubArgs:
    """Pushing the result to the Hugging Face Hub (token from the environment or login only)."""

    push_to_hub: bool = _f(False, "Upload the model (and its card) to hub_model_id.")
    hub_model_id: str | None = _f(None, "Target repo, e.g. me/sam2-apples.")
    hub_private_repo: bool = _f(True, "Create the repo private.")
    hub_strategy: Literal["end", "every_save", "checkpoint", "all_checkpoints"] = _f(
        "end",
        "end: final model once; every_save: the model at every save; checkpoint: also the last "
        "checkpoint as last-checkpoint/ (resumable); all_checkpoints: every checkpoint-N/.",
    )
    log_images: int = _f(4, "Validation images logged with mask overlays at each eval (0: none).")


@dataclass
class DataArgs:
    """Which prepared dataset, which splits, and augmentation."""

    dataset_path: str = _f("data/mineapple", "A DatasetDict folder written by scripts/prepare_*.")
    train_split: str = _f("train", "Split to train on.")
    eval_split: str = _f("validation", "Split to evaluate on.")
    max_train_samples: int = _f(0, "Use only the first N training images (0: all).")
    max_eval_samples: int = _f(0, "Use only the first N evaluation images (0: all).")
    hflip_prob: float = _f(0.0, "Probability of a horizontal flip per training sample.")
    color_jitter: float = _f(0.0, "Brightness/contrast/saturation jitter strength (0.2 = +-20%).")
    synthetic_num_images: int = _f(
        0, "If > 0 and dataset_path is absent, generate the synthetic orchard there first."
    )
    synthetic_image_size: list[int] = _f([256, 256], "Synthetic image size [H, W].")
    synthetic_zoom: float = _f(1.0, "Orchard close-up factor (>= 1): larger, fewer apples.")
    synthetic_kind: Literal["orchard", "shapes", "clutter"] = _f(
        "orchard",
        "What to generate: the apple orchard, or generic shapes for pretraining (shapes: flat "
        "on smooth backgrounds; clutter: shaded and occluded in busy scenes).",
    )
    replay_dataset_path: str | None = _f(
        None,
        "A second prepared DatasetDict whose train split is mixed into training (rehearsal: "
        "keeps what the checkpoint knew, e.g. the shapes a demo checkpoint was pretrained on).",
    )
    replay_fraction: float = _f(
        0.0, "Share of the training images drawn from replay_dataset_path (0 <= f < 1)."
    )
    replay_synthetic_kind: Literal["shapes", "clutter"] | None = _f(
        None,
        "Generate replay_dataset_path with this shapes style when it is absent (seed 0, the "
        "pretraining seed; synthetic_image_size).",
    )


@dataclass
class Sam2ModelArgs:
    """Which SAM2 checkpoint and what of it to train."""

    model_name_or_path: str = _f(
        "facebook/sam2.1-hiera-large",
        "Hub id, local HF folder, original .pt, or a small random config (sam2-tiny, sam2-mini).",
    )
    model_type: str | None = _f(None, "sam2.1 name (e.g. sam2.1-hiera-large) instead of a path.")
    revision: str = _f("main", "Hub revision of model_name_or_path.")
    resolution: int = _f(1024, "Square input size; SAM2 checkpoints were trained at 1024.")
    export_official: bool = _f(
        False,
        "Also write final/model.pt in the official SAM2 format (needs an official .pt, or a "
        "folder converted from one, as model_name_or_path: its memory modules go with it).",
    )
    freeze_image_encoder: bool = _f(False, "Freeze the Hiera image encoder.")


@dataclass
class PromptHeadArgs:
    """What of the promptable head to train, shared by SAM2 and the SAM3 tracker (the same
    prompt encoder and mask decoder), and whether a frozen encoder's features are cached."""

    freeze_prompt_encoder: bool = _f(False, "Freeze the prompt encoder.")
    freeze_mask_decoder: bool = _f(False, "Freeze the mask decoder.")
    cache_embeddings: str = _f(
        "auto",
        "auto | true | false: compute a frozen image encoder's features once per image (and "
        "flip) and store them beside the data (auto: on when the encoder is frozen, has no "
        "LoRA and color_jitter is 0).",
    )


@dataclass
class Sam2PromptArgs:
    """Prompt simulation (sampled from the ground truth every step, never stored)."""

    prompt_type: Literal["point", "box", "mixed"] | None = _f(
        None,
        "Initial training prompt per object; mixed = box or point, 50% each (unset: from "
        "preset). Evaluation: boxes for box, else centre point(s).",
    )
    num_points: int | None = _f(
        None, "Positive points per object (1, or 3-5) when the prompt is points (unset: preset)."
    )
    box_noise: float = _f(
        0.1, "Box corner noise: uniform within +-(this x box side), capped below."
    )
    box_noise_max_px: float = _f(20.0, "Cap on box noise, in pixels.")
    mask_prompt_prob: float = _f(0.0, "Probability of also giving the previous low-res mask.")
    num_correction_clicks: int | None = _f(
        None, "Iterative correction clicks from the error region (unset: from preset)."
    )
    gt_click_prob: float | None = _f(
        None,
        "Probability that a training correction click is drawn from the ground truth instead of "
        "the error region (unset: from preset).",
    )
    object_score_gating: bool | None = _f(
        None,
        "Masks become -1024 where the object score is <= 0, before the loss, the next click and "
        "the mask prompt, as the official SAM heads (unset: from preset).",
    )
    empty_target_prob: float | None = _f(
        None,
        "Per training image, probability of one extra target that is absent (empty mask), "
        "prompted by a negative click on the image: a negative for the object-score head "
        "(unset: from preset).",
    )
    max_objects_per_image: int = _f(16, "Objects prompted per image per step (random subset).")
    multimask_output: bool = _f(True, "Predict 3 masks per prompt; only the best is trained.")


@dataclass
class Sam2LossArgs:
    """Weights of the SAM2 loss terms (unset ones come from ``preset``)."""

    preset: Literal["official", "guide"] = _f(
        "official",
        "Fills every loss/prompt key left unset: official = Meta's SAM2.1 fine-tuning, guide = "
        "the fine-tuning guide's numbers (README: Presets).",
    )
    loss_focal: float | None = _f(None, "Sigmoid focal loss weight (unset: from preset).")
    loss_dice: float | None = _f(None, "Dice loss weight (unset: from preset).")
    loss_iou: float | None = _f(None, "IoU-prediction loss weight (unset: from preset).")
    loss_bce: float | None = _f(None, "Object-score BCE weight (unset: from preset).")
    iou_loss: Literal["l1", "mse"] = _f("l1", "IoU-prediction loss type.")
    focal_alpha: float = _f(0.25, "Focal alpha.")
    focal_gamma: float = _f(2.0, "Focal gamma.")
    extra_loss_weights: dict[str, float] = _f({}, "Weights of registered custom loss terms.")


@dataclass
class Sam2Config(
    TrainingArgs,
    DataArgs,
    Sam2ModelArgs,
    PromptHeadArgs,
    Sam2PromptArgs,
    Sam2LossArgs,
    LoraArgs,
    HubArgs,
):
    """Everything recipes/sam2_mineapple.py accepts."""

    family: Literal["sam2"] = _f("sam2", "Model family (fixed by the recipe).")

    def __post_init__(self) -> None:
        apply_preset(self)
        validate(self)


@dataclass
class Sam3TrackerModelArgs:
    """Which SAM3 tracker checkpoint and what of it to train (SAM3's point/box head)."""

    model_name_or_path: str = _f(
        "facebook/sam3",
        "Hub id (facebook/sam3: its tracker), local Sam3TrackerModel folder, sam3.pt, or a "
        "small random config (sam3-tracker-tiny, sam3-tracker-mini).",
    )
    revision: str = _f("main", "Hub revision of model_name_or_path.")
    resolution: int = _f(1008, "Square input size (a multiple of 14); SAM3 was trained at 1008.")
    freeze_image_encoder: bool = _f(False, "Freeze the SAM3 ViT vision encoder (and its FPN).")


@dataclass
class Sam3ModelArgs:
    """Which SAM3 checkpoint and what of it to train."""

    model_name_or_path: str = _f(
        "facebook/sam3", "Hub id, local HF folder, sam3.pt, or a small random config (sam3-tiny)."
    )
    revision: str = _f("main", "Hub revision of model_name_or_path.")
    resolution: int = _f(
        1008, "Square input size; SAM3 was trained at 1008 (other sizes degrade it)."
    )
    freeze_vision_encoder: bool = _f(False, "Freeze the ViT vision encoder.")
    freeze_text_encoder: bool = _f(False, "Freeze the CLIP text encoder.")
    freeze_tracker: bool = _f(True, "Always true: the video tracker is not trained by this recipe.")
    noun_phrase_from_category: bool = _f(
        False, "Use the category name for objects whose noun_phrase is empty (else an error)."
    )
    cache_embeddings: str = _f(
        "auto",
        "auto | true | false: compute a frozen vision encoder's FPN features once per image (and "
        "flip) and a frozen text encoder's features once per phrase, and store them beside the "
        "data (auto: images when the vision encoder is frozen, has no LoRA and color_jitter is "
        "0; phrases when the text encoder is frozen).",
    )


@dataclass
class Sam3QueryArgs:
    """Text queries per image: positives from the annotations, sampled negatives."""

    negative_ratio: float = _f(0.2, "Negative phrases per positive phrase.")
    max_phrases_per_image: int = _f(8, "Positive phrases queried per image per step.")
    hard_negatives: bool = _f(True, "Include attribute-swapped hard negatives.")


@dataclass
class Sam3LossArgs:
    """SAM3 loss: Hungarian matching, then grouped weights (see sam_hf.losses.sam3)."""

    preset: Literal["official", "guide"] = _f(
        "official",
        "Fills every loss key left unset: official = Meta's SAM3 training losses, guide = the "
        "fine-tuning guide's grouped weights (README: Presets).",
    )

    loss_segmentation: float | None = _f(
        None, "Group weight of mask focal + dice on matched queries (unset: from preset)."
    )
    loss_grounding: float | None = _f(
        None, "Group weight of classification + presence + boxes (unset: from preset)."
    )
    loss_attribute: float | None = _f(
        None, "Extra weight on attribute hard-negative queries (unset: from preset)."
    )
    class_loss: Literal["iabce", "focal", "bce"] | None = _f(
        None,
        "Per-detection classification loss: iabce = SAM3's IoU-aware BCE, focal or bce with hard "
        "targets (unset: from preset).",
    )
    cost_class: float | None = _f(None, "Matcher classification cost (unset: from preset).")
    cost_bbox: float | None = _f(None, "Matcher box L1 cost (unset: from preset).")
    cost_giou: float | None = _f(None, "Matcher GIoU cost (unset: from preset).")
    cost_mask: float | None = _f(None, "Matcher mask cost; 0 = off (unset: from preset).")
    weight_class: float | None = _f(None, "Classification term weight (unset: from preset).")
    weight_presence: float | None = _f(None, "Presence term weight (unset: from preset).")
    weight_bbox: float | None = _f(None, "Box L1 term weight (unset: from preset).")
    weight_giou: float | None = _f(None, "GIoU term weight (unset: from preset).")
    weight_mask_focal: float | None = _f(None, "Mask focal term weight (unset: from preset).")
    weight_mask_dice: float | None = _f(None, "Mask dice term weight (unset: from preset).")
    score_threshold: float = _f(0.5, "Score above which a prediction counts (SA-Co uses 0.5).")
    negative_class_loss: bool | None = _f(
        None,
        "Apply the classification loss to queries without targets too (SAM3 itself does not; "
        "unset: from preset).",
    )
    focal_alpha: float | None = _f(
        None, "Focal alpha (focal classification, mask focal, matcher) (unset: from preset)."
    )
    focal_gamma: float | None = _f(None, "Focal gamma (unset: from preset).")
    iabce_alpha: float | None = _f(
        None, "IABCE soft target prob^alpha * IoU^(1 - alpha) (unset: from preset)."
    )
    iabce_gamma: float | None = _f(
        None, "IABCE: negatives' BCE is multiplied by prob^gamma (unset: from preset)."
    )
    iabce_pos_weight: float | None = _f(
        None, "IABCE weight of the matched detections (unset: from preset)."
    )
    class_pad_queries: int | None = _f(
        None,
        "IABCE averages over max(detections, this) per query, as if padded with zero-loss "
        "detections; 0 = plain mean (unset: from preset).",
    )
    presence_alpha: float | None = _f(
        None,
        "Presence loss: alpha-weighted BCE (alpha for present, 1 - alpha for absent); < 0 = plain "
        "BCE (unset: from preset).",
    )
    mask_resolution: Literal["target", "prediction"] | None = _f(
        None,
        "Mask loss at the target's resolution (predictions upsampled) or at the prediction's "
        "(targets downsampled) (unset: from preset).",
    )
    aux_loss: bool | None = _f(
        None,
        "Class, presence and box terms on every intermediate decoder layer too (unset: preset).",
    )
    scale_by_batch_size: bool | None = _f(
        None, "Multiply the loss by sqrt(queries in the batch) (unset: from preset)."
    )
    normalization: Literal["global", "local"] | None = _f(
        None,
        "Divide box/mask terms by the mean target count over processes (global) or this "
        "process's count (local) (unset: from preset).",
    )


@dataclass
class Sam3Config(
    TrainingArgs, DataArgs, Sam3ModelArgs, Sam3QueryArgs, Sam3LossArgs, LoraArgs, HubArgs
):
    """Everything recipes/sam3_coco_text.py accepts."""

    family: Literal["sam3"] = _f("sam3", "Model family (fixed by the recipe).")

    def __post_init__(self) -> None:
        apply_preset(self)
        validate(self)


@dataclass
class Sam3TrackerConfig(
    TrainingArgs,
    DataArgs,
    Sam3TrackerModelArgs,
    PromptHeadArgs,
    Sam2PromptArgs,
    Sam2LossArgs,
    LoraArgs,
    HubArgs,
):
    """Everything recipes/sam3_tracker_mineapple.py accepts: SAM3's tracker head
    (``Sam3TrackerModel``) trained with SAM2's prompts, loss and presets."""

    family: Literal["sam3_tracker"] = _f("sam3_tracker", "Model family (fixed by the recipe).")

    def __post_init__(self) -> None:
        apply_preset(self)
        validate(self)


#: Section classes per config, in --help order.
SECTIONS: dict[type, tuple[type, ...]] = {
    cls: cls.__bases__ for cls in (Sam2Config, Sam3Config, Sam3TrackerConfig)
}
CONFIG_CLASSES: dict[str, type] = {
    "sam2": Sam2Config,
    "sam3": Sam3Config,
    "sam3_tracker": Sam3TrackerConfig,
}
