"""Where the agent looks on a node by default (a light module: the CLI reads it without the config model)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CRI_SOCKET = Path("/run/containerd/containerd.sock")
DEFAULT_CACHE = Path("/var/lib/coral/agent.db")
