"""The training losses, equal to the official formulas: :mod:`~sam_hf.losses.sam2` (focal,
dice, IoU prediction, object score; best of the multimask outputs), :mod:`~sam_hf.losses.sam3`
with its :mod:`~sam_hf.losses.matcher` (binary Hungarian matching, classification, boxes,
masks, presence), memory-lean fused mask terms in :mod:`~sam_hf.losses.fused`, the shared
focal/dice pieces in :mod:`~sam_hf.losses.common`, and :mod:`~sam_hf.losses.registry` for
user-registered extra terms weighted from the YAML."""
