"""The agent's errors: one root, each error knows whether retrying can help.

Terminal errors (bad configuration) stop the agent with a message that says
what to do; transient ones (runtime socket gone, restarting runtime) are
retried with backoff by the loop that met them.
"""

from __future__ import annotations


class CoralError(Exception):
    """Root of every error the agent raises on purpose."""

    transient: bool = False


class ConfigError(CoralError):
    """The configuration is invalid; names the key, the file and the fix."""


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
