"""The error base of both programs: one root, each error knows whether retrying can help.

Terminal errors (bad configuration) stop the program with a message that says
what to do; transient ones are retried with backoff by the loop that met them.
"""

from __future__ import annotations


class CoralError(Exception):
    """Root of every error the agent and the colony raise on purpose."""

    transient: bool = False


class ConfigError(CoralError):
    """The configuration is invalid; names the key, the file and the fix."""
