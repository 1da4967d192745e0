"""The chart's schema for the agent's settings (values `config`) allows only keys the agent accepts.

deploy/helm/coral-node-agent/values.schema.json is written by hand from docs/configuration.md; this
test builds one agent.yaml holding every key that schema allows under `config` (each with a value the
schema accepts) and loads it with the agent's own loader, which refuses unknown keys. A key the agent
drops or renames, or a typo in the schema, fails here without helm or a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from coral_base.errors import ConfigError
from cri_agent.config import load_settings

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "coral-node-agent"
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/definitions/")
        node = {**SCHEMA["definitions"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def sample(node: dict[str, Any]) -> Any:
    """A value the schema node accepts, with every property of every object filled in."""
    node = _resolve(node)
    if "examples" in node:
        return node["examples"][0]
    if "enum" in node:
        return node["enum"][-1]
    for alternatives in ("oneOf", "anyOf"):
        if alternatives in node:
            return sample(node[alternatives][0])
    kind = node.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        if "properties" in node:
            return {key: sample(child) for key, child in node["properties"].items()}
        return {"example.io/key": sample(node.get("additionalProperties") or {"type": "string"})}
    if kind == "array":
        return [sample(node["items"])]
    if kind == "string":
        if "pattern" in node:  # the only patterned strings under `config` are durations
            return "7s"
        return "x"
    if kind == "integer":
        return max(node.get("minimum", 1), min(node.get("maximum", 100), 100))
    if kind == "number":
        return 3.5
    if kind == "boolean":
        return True
    raise AssertionError(f"no sample for schema node {node}")


def leaf_paths(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict) and not any(k.startswith("example.io/") for k in value):
        return {p for k, v in value.items() for p in leaf_paths(v, f"{prefix}.{k}" if prefix else k)}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return leaf_paths(value[0], f"{prefix}[]")
    return {prefix}


def test_the_schema_closes_every_object_under_config() -> None:
    def walk(node: dict[str, Any], where: str) -> None:
        node = _resolve(node)
        for alternative in node.get("oneOf", []) + node.get("anyOf", []):
            walk(alternative, where)
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{where} accepts unknown keys"
            for key, child in node["properties"].items():
                walk(child, f"{where}.{key}")
        if node.get("type") == "array":
            walk(node["items"], f"{where}[]")

    walk(SCHEMA["properties"]["config"], "config")


def test_every_agent_key_the_schema_allows_loads_with_the_agents_loader(tmp_path: Path) -> None:
    config = sample(SCHEMA["properties"]["config"])
    # The keys the chart itself sets (values.yaml, `config`), as its ConfigMap template writes them.
    config["discovery"]["cri"]["socket"] = "/run/containerd/containerd.sock"
    config["discovery"]["kubernetes"]["api"] = "on"
    config["discovery"]["procRoot"] = "/host/proc"
    config["cache"]["path"] = "/var/lib/coral/agent.db"
    config["ops"]["observeOnly"] = True
    config["metrics"] = {"listen": "0.0.0.0:9102"}  # from the values' metrics.enabled and metrics.port
    config["colony"].update(
        address="coral-colony.coral-system.svc:9000",
        colonyId="prod",
        caFile="/etc/coral/colony/ca.crt",
        secretFile="/etc/coral/colony/colony-secret",
    )
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))

    load_settings(path)  # raises ConfigError naming any key it does not know

    paths = leaf_paths(config)
    assert len(paths) > 40, sorted(paths)  # the sample really holds every key, not a stub
    assert {"ops.nice", "discovery.kubernetes.forbiddenRetryInterval", "services[].selector.podLabel"} <= paths


@pytest.mark.parametrize(
    "typo",
    [{"ops": {"maxDurations": "5s"}}, {"discovery": {"kubernetes": {"excludeNamespace": ["a"]}}}, {"colonyy": {}}],
)
def test_the_loader_refuses_unknown_keys_so_the_check_above_means_something(tmp_path: Path, typo: Any) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(typo))
    with pytest.raises(ConfigError):
        load_settings(path)


def test_the_charts_default_config_loads(tmp_path: Path) -> None:
    config = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    allowed = SCHEMA["properties"]["config"]["properties"]
    assert set(config) <= set(allowed)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    load_settings(path)
