"""The one exception type of the config stage: a message a user acts on, never a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key or value is wrong; the message says how to fix it.

    Recipes print it as one ``Config error: ...`` line (rank 0 only) and exit 2; it derives
    from ValueError so library callers that build configs in Python can catch it generically.
    """
