"""Data: one schema, converters into Arrow caches, transforms and prompt simulation.

Submodules are imported where they are used (``from sam_hf.data.schema import FEATURES``), so
that model code importing ``sam_hf.data.prompts`` does not pull in ``datasets``/pycocotools.
"""
