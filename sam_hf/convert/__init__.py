"""Official SAM2 / SAM3 checkpoints (``.pt``) to transformers folders and back, with the key
maps in one place per family: :mod:`~sam_hf.convert.common` (reading and writing ``.pt``,
two-way key rules, the error that lists unknown / missing / unused keys) and
:mod:`~sam_hf.convert.sam2` (SAM2 / SAM2.1, all four sizes), :mod:`~sam_hf.convert.sam3` (the
released SAM3 checkpoint's detector to ``Sam3Model``) and :mod:`~sam_hf.convert.sam3_tracker`
(its tracker's prompt encoder and mask decoder to ``Sam3TrackerModel``). What a transformers
class has no place for (SAM2's memory modules, SAM3's tracker memory) is carried verbatim in
``official_extra.safetensors`` beside the weights, so the way back is complete."""
