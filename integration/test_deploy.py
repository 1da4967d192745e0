"""What operators install, checked by a real kube-apiserver (server-side dry-run apply)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cri_agent.config import load_settings
from integration.chart_render import one, refused, render
from integration.harness.kube import ControlPlane

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml"))


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> ControlPlane:
    control_plane.kubectl("apply", "-f", str(DEPLOY / "namespace.yaml"))
    return control_plane


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_every_manifest_is_accepted_by_server_side_dry_run(plane: ControlPlane, manifest: Path) -> None:
    out = plane.kubectl("apply", "--dry-run=server", "-f", str(manifest))
    kinds = [doc["kind"] for doc in yaml.safe_load_all(manifest.read_text()) if doc]
    assert out.count("(server dry run)") == len(kinds), out


def test_the_agent_daemonset_runs_everywhere_without_privileged_and_with_its_mounts() -> None:
    spec = yaml.safe_load((DEPLOY / "daemonset.yaml").read_text())["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["hostPID"] is True and {"operator": "Exists"} in spec["tolerations"]
    assert "privileged" not in container["securityContext"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {
        "/run/containerd/containerd.sock",
        "/host/proc",
        "/var/lib/coral",
    }
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert container["resources"]["limits"] and container["resources"]["requests"]
    observe = yaml.safe_load((DEPLOY / "daemonset-observe-only.yaml").read_text())["spec"]["template"]["spec"]
    caps = observe["containers"][0]["securityContext"]["capabilities"]["add"]
    assert "--observe-only" in observe["containers"][0]["args"] and "PERFMON" not in caps


@pytest.mark.parametrize(
    "values",
    [
        (),
        ("mode=observe-only",),
        (
            "rbac.create=false",
            "kubernetesApi.enabled=false",
            "config.discovery.kubernetes.includeNamespaces={shop,billing}",
        ),
        ("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=coral-node-agent"),
        ("colony.address=", "image.tag="),
        ("colony.enabled=true",),
    ],
    ids=["defaults", "observe-only", "no-rbac", "pre-provisioned-rbac", "cache-only", "with-colony"],
)
def test_the_rendered_chart_is_accepted_by_server_side_dry_run(plane: ControlPlane, values: tuple[str, ...]) -> None:
    rendered = render(*values)
    out = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert out.count("(server dry run)") == len(docs), out
    kinds = {d["kind"] for d in docs}
    assert ("ClusterRole" in kinds) == ("rbac.create=false" not in values)
    assert ("ServiceAccount" in kinds) == ("serviceAccount.create=false" not in values)
    assert ("Deployment" in kinds) == ("colony.enabled=true" in values)
    [daemonset] = [d for d in docs if d["kind"] == "DaemonSet"]
    caps = daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    assert ("PERFMON" in caps) == ("mode=observe-only" not in values)
    [config] = [d for d in docs if d["kind"] == "ConfigMap"]
    agent = yaml.safe_load(config["data"]["agent.yaml"])
    assert agent["ops"]["observeOnly"] == ("mode=observe-only" in values)
    # The agent's API use follows kubernetesApi.enabled, not rbac.create: pre-provisioned RBAC keeps enrichment.
    assert agent["discovery"]["kubernetes"]["api"] == ("off" if "kubernetesApi.enabled=false" in values else "on")


def test_the_shipped_configs_are_valid_agent_configs(tmp_path: Path) -> None:
    chart_config = one(render("config.discovery.kubernetes.includeNamespaces={shop}"), "ConfigMap")
    plain_config = yaml.safe_load((DEPLOY / "agent-config.yaml").read_text())
    for name, config in (("chart", chart_config), ("deploy", plain_config)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(config["data"]["agent.yaml"])
        settings = load_settings(path)
        assert settings.colony.address == "coral-colony.coral-system.svc:9000"
        assert settings.discovery.kubernetes.api == "on"
    assert load_settings(tmp_path / "chart.yaml").discovery.kubernetes.include_namespaces == ("shop",)


def test_an_unknown_mode_is_refused_by_the_chart() -> None:
    assert "mode must be full or observe-only" in refused("mode=yolo")


@pytest.mark.parametrize(
    ("manifest", "values"),
    [("daemonset.yaml", ()), ("daemonset-observe-only.yaml", ("mode=observe-only",))],
    ids=["full", "observe-only"],
)
def test_the_plain_daemonsets_and_the_chart_run_the_same_pod(manifest: str, values: tuple[str, ...]) -> None:
    plain = yaml.safe_load((DEPLOY / manifest).read_text())["spec"]["template"]["spec"]
    chart = one(render(*values), "DaemonSet")["spec"]["template"]["spec"]
    for key in ("hostPID", "priorityClassName", "tolerations"):
        assert plain[key] == chart[key], key
    mine, theirs = plain["containers"][0], chart["containers"][0]
    assert mine["securityContext"] == theirs["securityContext"]
    assert mine["resources"] == theirs["resources"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert mine[probe] == theirs[probe], probe
    assert [m["mountPath"] for m in mine["volumeMounts"]] == [m["mountPath"] for m in theirs["volumeMounts"]]
    volumes = {v["name"]: v for v in chart["volumes"]}
    for volume in plain["volumes"]:
        theirs_volume = volumes[volume["name"]]
        if "hostPath" in volume:
            assert volume["hostPath"] == theirs_volume["hostPath"]
        if "secret" in volume:
            assert volume["secret"]["optional"] is theirs_volume["secret"]["optional"] is True
