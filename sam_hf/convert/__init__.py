"""Official SAM2 / SAM3 checkpoints (``.pt``) to transformers folders and back, with the key
maps in one place per family: :mod:`~sam_hf.convert.common` (reading and writing ``.pt``,
two-way key rules, the error that lists unknown / missing / unused keys) and
:mod:`~sam_hf.convert.sam2` (SAM2 / SAM2.1, all four sizes)."""
