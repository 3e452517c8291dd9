"""What the tests compare bit for bit, and what they compare to a tolerance.

Bitwise (``torch.equal``) only where both sides are the *same computation*: the same kernels on
the same bits, in the same shapes and memory layout (the same model twice on the same input, a
run resumed from its own checkpoint, a seeded function called twice, tensors copied by
save/load or ``load_state_dict``). That holds on every CPU.

Two *different computations* of one quantity (cached vs uncached encoder features, the forward
of a reloaded model, batch 1 vs batch N, a fused vs a plain formula, DDP vs one process) agree
only up to rounding, and how they round depends on the CPU. The two sides differ in memory
layout or alignment even where the arithmetic is the same: cached features come back from
safetensors contiguous where the encoder's own output is channels-last, and ``from_pretrained``
weights are 4/8-byte aligned views of the checkpoint where a built model's are 64-byte aligned.
MKL's own documentation ties bitwise reproducibility to alignment and sends non-Intel CPUs down
another code branch, and MKL/oneDNN choose their kernels themselves (``ATEN_CPU_CAPABILITY``
does not reach them): the likely reason such pairs were bit-identical on a Xeon and differed in
the last bit on an EPYC (not reproduced here: the paths are bitwise equal on this Xeon under
every ATen capability). Such pairs are compared with a tolerance derived from the float format
and stated where it is used, next to the worst difference measured when the two paths run
under different ATen kernels (avx512 vs avx2 vs default, which gives exactly the EPYC's
10.063851356 vs 10.063852310 SAM3 loss) and the margin over it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

FP32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7: one ulp at 1.0
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 7.8e-3

# Training runs of two different computations (cached vs uncached) on float32: the loss of
# every step agrees to 16 ulp (measured worst 9.5e-8 relative, 0.8 ulp: 20x margin; the EPYC
# report was 10.063851356 vs 10.063852310, also 9.5e-8).
FP32_LOSS_RTOL = 16 * FP32_EPS  # 1.9e-6
# The same under bf16 autocast: one flipped bf16 bit is 2^-8 relative, measured worst 2.1e-3
# relative (0.27 bf16 eps): 4 bf16 eps = 3.1e-2 is a 15x margin.
BF16_LOSS_RTOL = 4 * BF16_EPS


def assert_same_state_dict(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    """Same keys and every tensor bit for bit (weights copied, or the same run resumed)."""
    assert a.keys() == b.keys(), set(a) ^ set(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def assert_losses_close(got: Sequence[float], want: Sequence[float], rel: float) -> None:
    """Per-step losses of two different computations of the same training run."""
    assert len(got) == len(want) and len(want) > 0, (got, want)
    bad = [
        (i, g, w) for i, (g, w) in enumerate(zip(got, want)) if not math.isclose(g, w, rel_tol=rel)
    ]
    assert not bad, f"steps (index, got, want) beyond rel {rel:.2g}: {bad}"


def trainable_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of the parameters a run trains (everything else must stay bitwise)."""
    return {n for n, p in model.named_parameters() if p.requires_grad}


def assert_trained_weights_close(
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    init: Mapping[str, torch.Tensor],
    trainable: set[str],
    *,
    lr: float,
    steps: int,
    per_step: float = 1.0,
    update_rtol: float | None = 1e-2,
) -> None:
    """Final weights of two different computations of one AdamW run that started at ``init``.

    Untrained tensors (frozen parts, buffers) are the same copy of ``init`` in both runs: bitwise.
    A trained element moves by lr * m/(sqrt(v) + eps) per step, about lr at most whatever the
    gradient's size; where the true gradient is ~0 (e.g. attention key biases: softmax ignores
    adding one constant to all logits) the gradient is rounding noise and a last-bit difference
    can turn that step around. So elementwise only ``per_step * lr * steps`` holds, and
    ``update_rtol`` bounds the disagreement over all trained weights relative to how far
    training moved them, ||a - b|| <= update_rtol * ||a - init||.
    """
    assert set(a) == set(b), set(a) ^ set(b)
    assert trainable and trainable <= set(a), trainable - set(a)
    frozen_differ = [k for k in a if k not in trainable and not torch.equal(a[k], b[k])]
    assert not frozen_differ, f"untrained tensors differ: {frozen_differ[:3]}"
    atol = per_step * lr * steps
    for k in sorted(trainable):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
    if update_rtol is not None:
        diff = torch.cat([(a[k].double() - b[k].double()).flatten() for k in trainable]).norm()
        moved = torch.cat([(a[k].double() - init[k].double()).flatten() for k in trainable]).norm()
        assert moved > 0, "training did not move any weight"
        assert diff <= update_rtol * moved, f"||a - b|| = {diff:.3g} > {update_rtol} x {moved:.3g}"


def assert_cached_features_are_encoder_output(module, train, autocast) -> None:
    """Each cached sample carries the features of exactly the pixels it holds (flipped or not):
    the encoder on the same pixels, one image, same autocast -- the same computation, so
    bitwise. Both flip variants must occur over two epochs."""
    from sam_hf.features.dataset import CachedEmbeddingDataset
    from sam_hf.features.store import autocast_context

    assert isinstance(train, CachedEmbeddingDataset)
    flips = set()
    for epoch in (0, 1):
        train.set_epoch(epoch)
        for i in range(len(train)):
            s = train[i]
            flips.add(s["hflip"])
            with torch.no_grad(), autocast_context("cpu", autocast):
                want = module.encoder_features(s["pixel_values"][None])
            assert all(torch.equal(c, w[0]) for c, w in zip(s["image_embeddings"], want))
    assert flips == {False, True}
