"""The errors a run stops with; the recipes print each as one line naming the file and the fix
(:func:`sam_hf.recipe.cli`)."""

from __future__ import annotations


class RunError(RuntimeError):
    """The run cannot go on; the message names the file and what to do (recipes print it as
    one line)."""


class CheckpointError(RunError):
    """A checkpoint is damaged or cannot be resumed from."""


class DiskFullError(RunError):
    """Writing a checkpoint or an export ran out of disk space."""
