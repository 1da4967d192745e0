"""The node agent's own errors (the root and ConfigError are in coral_base.errors).

The runtime socket gone or restarting, the socket refused, the cache that
cannot be opened or written: each says what to do.
"""

from __future__ import annotations

from coral_base.errors import CoralError


class RuntimeUnavailable(CoralError):
    """The CRI socket is missing, refusing, or the runtime is restarting."""

    transient = True


class RuntimePermissionDenied(CoralError):
    """The CRI socket exists but the agent may not use it.

    Retried with a long backoff: an operator may fix the mount or the
    security context without restarting the agent.
    """

    transient = True


class CacheError(CoralError):
    """The SQLite cache cannot be opened or written."""
