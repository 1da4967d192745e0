"""A listening address as operators write it: ``host:port``, ``[::]:port`` for IPv6."""

from __future__ import annotations

from coral_base.errors import ConfigError


def split_listen(listen: str, *, key: str) -> tuple[str, int]:
    """``listen`` as (host, port); ``key`` names the setting in the error. Port 0 picks a free port."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key} {listen!r} is not host:port: write e.g. 0.0.0.0:9102")
    return host.strip("[]"), int(port)
