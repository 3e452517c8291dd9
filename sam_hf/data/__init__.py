"""Data: one schema, converters into Arrow caches, transforms and prompt simulation."""

from sam_hf.data.schema import FEATURES, attributes_dict, make_object

__all__ = ["FEATURES", "attributes_dict", "make_object"]
