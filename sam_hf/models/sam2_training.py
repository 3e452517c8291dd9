"""SAM2's training module: prompts, correction clicks and the official loss around a Sam2Model.

:class:`Sam2ForTraining` is the module the trainer optimises: it encodes each image once, runs
the prompt encoder and mask decoder for every object (and every correction click), and returns
the official SAM2 loss (:mod:`sam_hf.losses.sam2`). ``wrapper.model`` stays a plain
``Sam2Model`` (built by :func:`sam_hf.models.sam2.build_sam2`), so ``save_pretrained`` output
loads with transformers alone.

Which mask is predicted (training, validation loss and :meth:`Sam2ForTraining.predict` alike):
with ``multimask_output`` and a single-point prompt the decoder returns 3 masks (the loss
trains the best one; prediction takes the one with the highest predicted IoU); for boxes,
several points, mask prompts and correction steps it returns its single-mask output (as the
official ``multimask_max_pt_num: 1``). Sam2Model's mask decoder has one mode-dependent
behaviour, ``dynamic_multimask_via_stability``: in ``eval()`` a single-mask call may silently
swap in the best multimask output when the single mask is "unstable". The wrapper switches it
off for its own calls, so a prediction is the same mask in train and eval mode and is exactly
the output the loss trained. The saved config keeps the flag, so users calling the exported
model directly get transformers' usual behaviour.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Sam2Model

from sam_hf.data.prompts import PAD_LABEL, make_generator, sample_correction_clicks
from sam_hf.losses.sam2 import Sam2Loss
from sam_hf.models.common import enable_activation_checkpointing
from sam_hf.models.freezing import check_encoder_frozen, encoder_is_trainable

logger = logging.getLogger(__name__)

#: Objects decoded at once by ``predict`` (bounds memory on images with 100+ objects).
PREDICT_CHUNK = 32
#: The official ``NO_OBJ_SCORE`` (sam2/modeling/sam2_base.py): the mask logit of every pixel
#: of an object whose object score is <= 0, when ``object_score_gating`` is on.
NO_OBJ_SCORE = -1024.0
#: Object ids of the absent targets added by ``empty_target_prob`` (seeds their clicks; real
#: objects have ids 0..K-1).
EMPTY_TARGET_ID = 1 << 20


def num_objects_across_ranks(n: int, device: torch.device) -> float:
    """The loss normaliser: the mean object count per rank, at least 1 (as the official loss:
    all-reduce of the count, divided by the world size, clamped). ``n`` on a single process.

    A collective under torch.distributed: every rank must call it at every training forward.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return max(float(n), 1.0)
    world = torch.distributed.get_world_size()
    if world == 1:
        return max(float(n), 1.0)
    backend_device = device if torch.distributed.get_backend() != "gloo" else torch.device("cpu")
    t = torch.tensor(float(n), device=backend_device)
    torch.distributed.all_reduce(t)
    return max(float(t.item()) / world, 1.0)


class Sam2ForTraining(nn.Module):
    """Sam2Model + prompt iterations + the official SAM2 loss, for the shared trainer.

    ``forward(batch)`` (a :class:`~sam_hf.data.collate.Sam2Collator` batch) encodes each image
    once and then, for all objects:

    1. decodes the initial prompt (point(s) or box);
    2. for objects flagged ``mask_prompt``, decodes again with the previous low-res logits as
       a mask prompt (same clicks);
    3. ``num_correction_clicks`` times: adds one click drawn from the error region of the
       current prediction (uniformly in training, the RITM center click in eval mode) and
       decodes with all clicks so far plus the previous low-res logits as mask prompt, as the
       official ``_iter_correct_pt_sampling``; gradients flow through the mask prompts, as
       there. Click randomness comes from the sample seed and the object's index.

    The loss of every step is summed (each step normalised by the number of objects, averaged
    over ranks as the official loss does). With ``object_score_gating`` every decoded mask is
    set to -1024 in training where the object score is <= 0, as the official SAM heads do, so the loss,
    the next click and the next mask prompt all see the gated mask. With
    ``empty_target_prob`` a training image may get one extra target that is absent (empty
    ground truth) prompted by a negative click anywhere on the image (what the official
    ``get_next_point`` gives for an empty mask): the object-score head's negatives.

    Args:
        model: a ``transformers.Sam2Model`` (``self.model``, saved with ``save_pretrained``).
        args: the resolved config (``multimask_output``, ``num_correction_clicks``,
            ``gt_click_prob``, ``object_score_gating``, ``empty_target_prob``,
            ``gradient_checkpointing`` and the loss keys; the three newer ones default to off).
    """

    def __init__(self, model: Sam2Model, args: Any) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = Sam2Loss.from_config(args)
        self.multimask_output = bool(args.multimask_output)
        self.num_correction_clicks = int(args.num_correction_clicks)
        if self.num_correction_clicks < 0:
            raise ValueError("num_correction_clicks must be >= 0.")
        self.gt_click_prob = float(getattr(args, "gt_click_prob", 0.0) or 0.0)
        self.object_score_gating = bool(getattr(args, "object_score_gating", False))
        self.empty_target_prob = float(getattr(args, "empty_target_prob", 0.0) or 0.0)
        if getattr(args, "gradient_checkpointing", False):
            n = enable_activation_checkpointing(self.model)
            logger.info("activation checkpointing on %d SAM2 blocks", n)

    # -- pieces ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _fixed_mask_selection(self) -> Iterator[None]:
        """Switch off the decoder's eval-only stability swap for the duration of a call."""
        dec = self.model.mask_decoder
        saved = dec.dynamic_multimask_via_stability
        dec.dynamic_multimask_via_stability = False
        try:
            yield
        finally:
            dec.dynamic_multimask_via_stability = saved

    def encoder_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's part of :meth:`image_embeddings`: the FPN maps, ``no_memory_embedding``
        added to the last. With a frozen encoder these are fixed per image, which is what the
        embedding cache (:mod:`sam_hf.features`) stores. Run without autograd when frozen.

        Only the first ``len(backbone_feature_sizes)`` maps are kept, as in transformers'
        forward: all of SAM2's; Sam3TrackerModel drops a 4th (0.5x) map -- the one that got
        ``no_memory_embedding``. sam_hf follows transformers here (what ``final/`` is served
        with), not Meta's tracker, which adds the offset to the 1x map."""
        m = self.model
        ctx = contextlib.nullcontext() if encoder_is_trainable(m) else torch.no_grad()
        with ctx:
            feats = list(m.vision_encoder(pixel_values, return_dict=True).fpn_hidden_states)
            feats[-1] = feats[-1] + m.no_memory_embedding.reshape(1, -1, 1, 1)
        return feats[: len(m.backbone_feature_sizes)]

    def project_features(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The mask decoder's (trainable) ``conv_s0``/``conv_s1`` on the high-res maps."""
        m = self.model
        return [m.mask_decoder.conv_s0(feats[0]), m.mask_decoder.conv_s1(feats[1]), *feats[2:]]

    def image_embeddings(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The three feature maps Sam2Model's decoder reads, computed once per image.

        Same values as ``Sam2Model.get_image_embeddings`` (which runs under ``no_grad``), but
        differentiable, and with the Hiera encoder run without autograd when it is frozen
        (the decoder's ``conv_s0/s1`` projections still get gradients).
        """
        return self.project_features(self.encoder_features(pixel_values))

    def batch_embeddings(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """:meth:`image_embeddings` of the batch, from its cached encoder features
        (``batch["image_embeddings"]``, see :mod:`sam_hf.features`) when it carries them, so the
        encoder is not run at all."""
        cached = batch.get("image_embeddings")
        if cached is not None:
            check_encoder_frozen(self.model)
            return self.project_features(list(cached))
        return self.image_embeddings(batch["pixel_values"])

    def decode(
        self,
        embeddings: list[torch.Tensor],
        image_index: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_inputs: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder for objects that all have the same number of points.

        Each object is its own batch element (the decoder's dense mask prompt is per batch
        element, so this is what lets objects of one image carry different mask prompts).

        Returns low-res mask logits (n, M, h, w), IoU predictions (n, M) and object-score
        logits (n, 1). With ``object_score_gating``, in training mode, the masks of objects
        whose score is <= 0 are :data:`NO_OBJ_SCORE` everywhere (no gradient reaches the
        decoder through them), as the official ``SAM2Train``. In eval mode (``predict``, the
        evaluation protocols) masks are not gated, as the official ``SAM2ImagePredictor`` and
        a plain transformers ``Sam2Model``: a prompted object is always there.
        """
        emb = [e.index_select(0, image_index) for e in embeddings]
        with self._fixed_mask_selection():
            out = self.model(
                image_embeddings=emb,
                input_points=points[:, None],
                input_labels=labels[:, None],
                input_masks=mask_inputs,
                multimask_output=multimask,
            )
        masks, scores = out.pred_masks[:, 0], out.object_score_logits[:, 0]
        if self.object_score_gating and self.training:
            masks = torch.where(scores[:, :, None, None] > 0, masks, NO_OBJ_SCORE)
        return masks, out.iou_scores[:, 0], scores

    def _use_multimask(self, num_points: int, with_mask_prompt: bool) -> bool:
        return self.multimask_output and num_points == 1 and not with_mask_prompt

    @staticmethod
    def _best_by_iou(masks: torch.Tensor, ious: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, M, h, w), (n, M) -> the mask with the highest predicted IoU (n, 1, h, w), (n,)."""
        best = ious.argmax(-1)
        idx = best[:, None, None, None].expand(-1, 1, *masks.shape[-2:])
        return masks.gather(1, idx), ious.gather(1, best[:, None]).squeeze(1)

    def _objects(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        valid = batch["object_valid"]
        img, slot = valid.nonzero(as_tuple=True)
        flagged = batch["mask_prompt"][img, slot] if "mask_prompt" in batch else None
        return {
            "image": img,
            "gt": batch["masks"][img, slot],
            "points": batch["input_points"][img, slot],
            "labels": batch["input_labels"][img, slot],
            "count": batch["num_prompt_points"][img, slot],
            "ids": batch["object_ids"][img, slot],
            "mask_prompt": flagged if flagged is not None else torch.zeros_like(img, dtype=bool),
        }

    def _add_empty_targets(
        self, batch: dict[str, Any], obj: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Training only: with probability ``empty_target_prob`` per image (seeded by the
        sample), one more target with an empty ground truth, prompted by one negative click
        drawn uniformly over the image (the official ``get_next_point`` on an empty mask)."""
        if not (self.training and self.empty_target_prob > 0):
            return obj
        seeds = batch["seeds"].tolist()
        gens = [make_generator(int(s), "sam2-empty-target") for s in seeds]
        chosen = [
            i
            for i, g in enumerate(gens)
            if torch.rand(1, generator=g).item() < self.empty_target_prob
        ]
        if not chosen:
            return obj
        k, res = len(chosen), obj["gt"].shape[-1]
        empty = torch.zeros(k, res, res, dtype=torch.bool)
        click, label = sample_correction_clicks(empty, empty, [gens[i] for i in chosen])
        dev = obj["gt"].device
        points = obj["points"].new_zeros((k, *obj["points"].shape[1:]))
        labels = obj["labels"].new_full((k, *obj["labels"].shape[1:]), PAD_LABEL)
        points[:, 0], labels[:, 0] = click.to(points.dtype), label.to(labels.dtype)
        extra = {
            "image": torch.tensor(chosen, device=dev),
            "gt": empty.to(device=dev, dtype=obj["gt"].dtype),
            "points": points.to(dev),
            "labels": labels.to(dev),
            "count": obj["count"].new_ones(k),
            "ids": obj["ids"].new_full((k,), EMPTY_TARGET_ID),
            "mask_prompt": obj["mask_prompt"].new_zeros(k),
        }
        return {key: torch.cat([obj[key], extra[key].to(obj[key].device)]) for key in obj}

    @staticmethod
    def _groups(count: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Objects grouped by their number of prompt points: [(n_points, object indices)]."""
        return [(int(c), (count == c).nonzero().squeeze(1)) for c in torch.unique(count).tolist()]

    def _zero_output(self, batch: dict[str, Any]) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        if params:
            loss = torch.stack([p.sum() * 0.0 for p in params]).sum()
        else:
            loss = torch.zeros((), device=batch["pixel_values"].device, requires_grad=True)
        zero = loss.detach()
        if self.training:  # the other ranks' normaliser is a collective: take part in it
            num_objects_across_ranks(0, loss.device)
        return {
            "loss": loss,
            "terms": {f"loss_{n}": zero for n in self.loss_fn.term_names},
            "num_objects": 0,
            "num_skipped_empty": int(batch.get("num_skipped_empty", 0)),
        }

    # -- training -------------------------------------------------------------------------

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Loss of one batch: ``{"loss", "terms", "num_objects", "num_skipped_empty"}``.

        A batch without any object (every image was empty) gives a zero loss connected to
        every trainable parameter, so ``backward`` and DDP's all-reduce still work.
        """
        valid = batch["object_valid"]
        if valid.numel() == 0 or not bool(valid.any()):
            return self._zero_output(batch)
        obj = self._add_empty_targets(batch, self._objects(batch))
        n = obj["gt"].shape[0]
        obj["norm"] = torch.tensor(
            num_objects_across_ranks(n, obj["gt"].device) if self.training else float(n)
        )
        terms = self.loss_fn.new_terms(batch["pixel_values"])
        step = functools.partial(self._step, self.batch_embeddings(batch), obj, terms)
        # Step 1: the initial prompts.
        low_best, state = self._initial_prompts(obj, step)
        # Step 2: previous logits as a mask prompt, for the flagged objects.
        low_best = self._mask_prompts(batch, obj, state, low_best, step)
        # Step 3: correction clicks from the current error region.
        for gens in self._click_generators(batch, obj):
            low_best = self._correction_click(batch, obj, gens, state, low_best, step)
        total = self.loss_fn.total(terms)
        return {
            "loss": total,
            "terms": {f"loss_{k}": v.detach() for k, v in terms.items()},
            "num_objects": n,
            "num_skipped_empty": int(batch.get("num_skipped_empty", 0)),
        }

    def _step(
        self,
        embeddings: list[torch.Tensor],
        obj: dict[str, torch.Tensor],
        terms: dict[str, torch.Tensor],
        members: torch.Tensor,
        pts: torch.Tensor,
        labs: torch.Tensor,
        mask_in: torch.Tensor | None,
    ) -> torch.Tensor:
        """Decode ``members`` with these prompts, add their loss to ``terms``, and return their
        best low-res logits (n, 1, h, w) (the next step's mask prompt)."""
        low, ious, scores = self.decode(
            embeddings,
            obj["image"][members],
            pts,
            labs,
            mask_in,
            self._use_multimask(pts.shape[1], mask_in is not None),
        )
        # The loss upsamples the low-res logits to the R x R ground truth itself, a few
        # objects at a time (sam_hf.losses.sam2: the full-res maps are never all alive).
        gt = obj["gt"]
        self.loss_fn.accumulate(terms, low, ious, scores, gt[members], float(obj["norm"]))
        return self._best_by_iou(low, ious)[0]

    def _initial_prompts(
        self, obj: dict[str, torch.Tensor], step: Callable[..., torch.Tensor]
    ) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """Step 1: every object decoded from its initial point(s) or box, grouped by point
        count. Returns the best low-res logits of all objects and the per-group prompts
        ``[members, points, labels]`` that later steps extend."""
        n = obj["gt"].shape[0]
        low_best: torch.Tensor | None = None
        state = []
        for count, members in self._groups(obj["count"]):
            pts, labs = obj["points"][members, :count], obj["labels"][members, :count]
            best = step(members, pts, labs, None)
            if low_best is None:
                low_best = best.new_zeros((n, *best.shape[1:]))
            low_best = low_best.index_put((members,), best)
            state.append([members, pts, labs])
        assert low_best is not None
        return low_best, state

    @staticmethod
    def _mask_prompts(
        batch: dict[str, Any],
        obj: dict[str, torch.Tensor],
        state: list[list[torch.Tensor]],
        low_best: torch.Tensor,
        step: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """Step 2: objects flagged ``mask_prompt`` decoded again, the same clicks plus their
        previous low-res logits as a mask prompt."""
        flagged = obj["mask_prompt"]
        if not bool(flagged.any()):
            return low_best
        for members, pts, labs in state:
            sel = flagged[members].nonzero().squeeze(1)
            if sel.numel():
                m = members[sel]
                best = step(m, pts[sel], labs[sel], low_best[m])
                low_best = low_best.index_put((m,), best)
        return low_best

    def _click_generators(
        self, batch: dict[str, Any], obj: dict[str, torch.Tensor]
    ) -> list[list[torch.Generator]]:
        """One list of per-object generators per correction click (the same list each time:
        click randomness comes from the sample seed and the object's id)."""
        if not self.num_correction_clicks:
            return []
        seeds = batch["seeds"].tolist()
        ids = obj["ids"].tolist()
        gens = [
            make_generator(int(seeds[i]), "sam2-correction", int(o))
            for i, o in zip(obj["image"].tolist(), ids)
        ]
        return [gens] * self.num_correction_clicks

    def _correction_click(
        self,
        batch: dict[str, Any],
        obj: dict[str, torch.Tensor],
        gens: list[torch.Generator],
        state: list[list[torch.Tensor]],
        low_best: torch.Tensor,
        step: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """Step 3, once: a click from the error region of the current prediction (uniformly
        in training -- or, with probability ``gt_click_prob``, from the ground truth alone, as
        the official ``prob_to_sample_from_gt_for_train`` -- the center click in eval mode), then every object decoded with all its
        clicks so far and its previous low-res logits as mask prompt."""
        res = batch["pixel_values"].shape[-1]
        gt = obj["gt"]
        method = "uniform" if self.training else "center"
        with torch.no_grad():
            pred = (
                F.interpolate(
                    low_best.detach().float(), size=(res, res), mode="bilinear", align_corners=False
                )[:, 0]
                > 0
            )
            gt_prob = self.gt_click_prob if self.training else 0.0
            click, click_label = sample_correction_clicks(pred, gt, gens, method, gt_prob=gt_prob)
        for entry in state:
            members, pts, labs = entry
            pts = torch.cat([pts, click[members, None].to(pts.dtype)], dim=1)
            labs = torch.cat([labs, click_label[members, None].to(labs.dtype)], dim=1)
            entry[1], entry[2] = pts, labs
            best = step(members, pts, labs, low_best[members])
            low_best = low_best.index_put((members,), best)
        return low_best

    # -- evaluation -----------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One dict per image at its original resolution, from the batch's initial prompts.

        ``{"image_id", "pred_masks": bool (K, H, W), "gt_masks": bool (K, H, W), "scores": (K,)}``
        on the CPU, objects in batch order. The mask is the single-mask output, or with
        multimask output the one with the highest predicted IoU; ``scores`` is that predicted
        IoU. Low-res logits are upsampled bilinearly straight to (H, W) and thresholded at 0.
        No correction clicks or mask prompts are used: this is the one-prompt accuracy a user
        gets. Ground truth is ``orig_masks`` when the batch has it, else the R x R masks
        resized (nearest) to (H, W).
        """
        valid = batch["object_valid"]
        b = valid.shape[0]
        if b == 0 or not bool(valid.any()):
            return []
        obj = self._objects(batch)
        n = obj["gt"].shape[0]
        embeddings = self.batch_embeddings(batch)
        low_best: torch.Tensor | None = None
        scores = torch.zeros(n)
        for count, members in self._groups(obj["count"]):
            for chunk in members.split(PREDICT_CHUNK):
                low, ious, _ = self.decode(
                    embeddings,
                    obj["image"][chunk],
                    obj["points"][chunk, :count],
                    obj["labels"][chunk, :count],
                    None,
                    self._use_multimask(count, False),
                )
                best, score = self._best_by_iou(low, ious)
                if low_best is None:
                    low_best = best.new_zeros((n, *best.shape[1:]), dtype=torch.float32)
                low_best[chunk] = best.float()
                scores[chunk.cpu()] = score.float().cpu()
        assert low_best is not None

        out = []
        image_of = obj["image"]
        for i in range(b):
            members = (image_of == i).nonzero().squeeze(1)
            if members.numel() == 0:
                continue
            h, w = (int(v) for v in batch["orig_sizes"][i])
            preds = [
                F.interpolate(low_best[c], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                .gt(0)
                .cpu()
                for c in members.split(PREDICT_CHUNK)
            ]
            if "orig_masks" in batch:
                gt = batch["orig_masks"][i].bool().cpu()
            else:
                gt = (
                    F.interpolate(
                        obj["gt"][members][:, None].float(), size=(h, w), mode="nearest-exact"
                    )[:, 0]
                    .bool()
                    .cpu()
                )
            out.append(
                {
                    "image_id": batch["image_ids"][i],
                    "pred_masks": torch.cat(preds),
                    "gt_masks": gt,
                    "scores": scores[members.cpu()],
                }
            )
        return out
