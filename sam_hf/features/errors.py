"""The exception type of the features stage: the cache cannot serve this run as configured."""

from __future__ import annotations

from sam_hf.config import ConfigError


class FeatureCacheError(ConfigError):
    """The embedding cache cannot be used as asked; the message says how to fix it.

    A :class:`~sam_hf.config.errors.ConfigError` (so a ValueError): recipes print it as one
    line, and callers that catch config errors catch it too.
    """
