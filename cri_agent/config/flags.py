"""The command-line flags of ``coral agent node`` as the highest-precedence source (docs/configuration.md#flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cri_agent.config.values import parse_label_pairs


def flags_to_settings(
    *,
    mode: str | None = None,
    include_namespaces: list[str] | None = None,
    exclude_namespaces: list[str] | None = None,
    include_labels: list[str] | None = None,
    exclude_labels: list[str] | None = None,
    cri_socket: Path | None = None,
    cache: Path | None = None,
    node_name: str | None = None,
    log_format: str | None = None,
    resync_interval: str | None = None,
    poll_interval: str | None = None,
    no_events: bool = False,
    observe_only: bool = False,
    kubeconfig: Path | None = None,
) -> dict[str, Any]:
    """Command-line flags as a nested settings mapping (only what was given)."""
    given: dict[str, Any] = {
        "agent.mode": mode,
        "agent.nodeName": node_name,
        "discovery.cri.socket": cri_socket,
        "discovery.cri.events": False if no_events else None,
        "discovery.kubernetes.includeNamespaces": include_namespaces,
        "discovery.kubernetes.excludeNamespaces": exclude_namespaces,
        "discovery.kubernetes.includeLabels": include_labels
        and dict(parse_label_pairs(include_labels, key="--include-label")),
        "discovery.kubernetes.excludeLabels": exclude_labels
        and dict(parse_label_pairs(exclude_labels, key="--exclude-label")),
        "discovery.kubernetes.resyncInterval": resync_interval,
        "discovery.kubernetes.pollInterval": poll_interval,
        "cache.path": cache,
        "log.format": log_format,
        "ops.observeOnly": True if observe_only else None,
        "discovery.kubernetes.kubeconfig": kubeconfig,
    }
    flags: dict[str, Any] = {}
    for path, value in given.items():
        if value is None or value == [] or value == "":
            continue
        *parents, leaf = path.split(".")
        node = flags
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return flags
