"""Render deploy/helm/coral-node-agent with the helm that `make kube-binaries` builds.

The helm and kube-apiserver built from source report no real Kubernetes version (helm assumes
v1.20), so renders and lints pass the version of the apiserver module the harness runs
(integration/kube/go.mod) to satisfy the chart's kubeVersion.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from integration.harness.kube import KUBE_BIN

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "deploy" / "helm" / "coral-node-agent"
CI_VALUES = sorted(CHART.glob("ci/*-values.yaml"))
GOLDEN = CHART / "ci" / "golden"
_GO_MOD = (REPO / "integration" / "kube" / "go.mod").read_text()
KUBE_VERSION = re.search(r"^require k8s\.io/kubernetes v(\S+)$", _GO_MOD, re.MULTILINE).group(1)  # type: ignore[union-attr]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KUBE_BIN / "helm"), *args], capture_output=True, text=True, timeout=120, check=False)


def render(*values: str, files: tuple[Path, ...] = (), release: str = "coral", namespace: str = "coral-system") -> str:
    """`helm template` with --set VALUES and -f FILES; fails the test with helm's message."""
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    args += [a for f in files for a in ("-f", str(f))]
    args += [a for v in values for a in ("--set", v)]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def refused(*values: str) -> str:
    """helm's message for values the chart refuses (the test fails if it accepts them)."""
    args = ["template", "coral", str(CHART), "--kube-version", KUBE_VERSION]
    done = helm(*args, *(a for v in values for a in ("--set", v)))
    assert done.returncode != 0, f"the chart accepted {values}"
    return done.stderr


def docs(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def one(rendered: str, kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in docs(rendered)
        if d["kind"] == kind
        and (component is None or d["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]
    assert len(found) == 1, f"{len(found)} {kind} rendered"
    return found[0]


def agent_config(rendered: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(one(rendered, "ConfigMap")["data"]["agent.yaml"])
    return config
