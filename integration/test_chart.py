"""The Helm chart (deploy/helm/coral-node-agent) behaves like the charts SREs already run.

Each ci/*-values.yaml is linted with `helm lint --strict`, rendered and compared with its committed
render under ci/golden/ (refresh them with `CORAL_UPDATE_GOLDEN=1 python -m pytest
integration/test_chart.py` or `make chart-golden`, and review the diff), accepted by a real
kube-apiserver's server-side dry run, and its agent.yaml loads with the agent's own loader. The rest
checks one convention each: typos refused, cache-only mode, release-scoped names, the image
reference, RBAC apart from the agent's API use, the colony, security contexts, `helm test`, NOTES.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from cri_agent.config import load_settings
from integration.chart_render import (
    CHART,
    CI_VALUES,
    GOLDEN,
    KUBE_VERSION,
    agent_config,
    docs,
    helm,
    one,
    refused,
    render,
)
from integration.harness.kube import ControlPlane

DEPLOY = CHART.parent.parent
SERVICE_MONITOR_CRD = Path(__file__).resolve().parent / "crds" / "servicemonitors.yaml"
UPDATE = os.environ.get("CORAL_UPDATE_GOLDEN") == "1"
AGENT_CAPS = {"SYS_ADMIN", "SYS_PTRACE", "NET_RAW", "NET_ADMIN", "DAC_READ_SEARCH"}


def ci_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> ControlPlane:
    control_plane.kubectl("apply", "-f", str(DEPLOY / "namespace.yaml"))
    control_plane.kubectl("apply", "-f", str(SERVICE_MONITOR_CRD))  # the Prometheus Operator's, cut down
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", "-f", str(SERVICE_MONITOR_CRD))
    return control_plane


# --- the ci values files ---


@pytest.mark.parametrize("values", CI_VALUES, ids=ci_id)
def test_helm_lint_strict_is_clean(values: Path) -> None:
    done = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(values))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=ci_id)
def test_the_render_matches_its_golden(values: Path) -> None:
    rendered = render(files=(values,))
    golden = GOLDEN / f"{ci_id(values)}.yaml"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert golden.exists(), f"no {golden}: run CORAL_UPDATE_GOLDEN=1 python -m pytest {__file__}"
    assert rendered == golden.read_text(), f"{values.name} renders differently from {golden}: review, then refresh"


def test_every_golden_has_its_values_file() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == {ci_id(p) for p in CI_VALUES}


@pytest.mark.parametrize("values", CI_VALUES, ids=ci_id)
def test_the_render_is_accepted_by_server_side_dry_run(plane: ControlPlane, values: Path) -> None:
    rendered = render(files=(values,))
    out = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert out.count("(server dry run)") == len(docs(rendered)), out


@pytest.mark.parametrize("values", CI_VALUES, ids=ci_id)
def test_the_rendered_agent_config_loads(tmp_path: Path, values: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(one(render(files=(values,)), "ConfigMap")["data"]["agent.yaml"])
    load_settings(path)


def test_every_setting_of_the_everything_file_reaches_the_agent(tmp_path: Path) -> None:
    everything = CHART / "ci" / "everything-values.yaml"
    config = yaml.safe_load(everything.read_text())["config"]
    rendered = agent_config(render(files=(everything,)))

    def contains(given: object, got: object, where: str) -> None:
        if isinstance(given, dict):
            assert isinstance(got, dict), where
            for key, value in given.items():
                contains(value, got.get(key), f"{where}.{key}")
        else:
            assert given == got, where

    contains(config, rendered, "config")
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(rendered))
    settings = load_settings(path)
    assert settings.ops.max_frequency_hz == 49 and settings.ops.nice == 15
    assert settings.log.level == "debug"


# --- one convention each ---


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("serviceAccount.creat=true", "Additional property creat is not allowed"),
        ("filter.excludeNamespaces={a}", "Additional property filter is not allowed"),
        ("podAnnotation.a=b", "Additional property podAnnotation is not allowed"),
        ("config.ops.maxDurations=5s", "Additional property maxDurations is not allowed"),
        ("config.discovery.kubernetes.excludeNamespace={a}", "Additional property excludeNamespace is not allowed"),
        ("config.discovery.kubernetes.api=off", "Additional property api is not allowed"),  # kubernetesApi.enabled
        ("config.cache.path=/x", "Additional property path is not allowed"),  # cache.hostPath
        ("config.ops.maxDuration=soon", "config.ops.maxDuration"),
        ("config.ops.nice=40", "config.ops.nice"),
        ("config.log.level=loud", "config.log.level"),
        ("image.digest=latest", "image.digest"),
        ("colony.service.type=Ingress", "colony.service.type"),
        ("tolerations[0].operater=Exists", "Additional property operater is not allowed"),
        ("securityContext.capabilites.add={SYS_ADMIN}", "Additional property capabilites is not allowed"),
        ("colony.auditRetention=400", "colony.auditRetention"),  # 400 seconds? a retention says its unit
        ("probes.liveness.periodSecond=5", "Additional property periodSecond is not allowed"),
        ("colony.probes.readiness.failureThreshold=0", "colony.probes.readiness.failureThreshold"),
        ("colony.enrollment.method=token", "colony.enrollment.method"),
        ("colony.enrollment.audiance=x", "Additional property audiance is not allowed"),
    ],
)
def test_unknown_keys_and_bad_values_are_refused(value: str, message: str) -> None:
    assert message in refused(value)


def test_cache_only_mode_renders_no_colony_section_and_mounts_no_secret(tmp_path: Path) -> None:
    rendered = render("colony.address=", "config.colony.heartbeatInterval=5s")
    assert "colony" not in agent_config(rendered)
    pod = one(rendered, "DaemonSet")["spec"]["template"]["spec"]
    assert "colony" not in {v["name"] for v in pod["volumes"]}
    assert "colony" not in {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    path = tmp_path / "agent.yaml"
    path.write_text(one(rendered, "ConfigMap")["data"]["agent.yaml"])
    assert load_settings(path).colony.address == ""


def test_with_a_colony_the_secret_is_mounted_optional() -> None:
    pod = one(render("colony.secretName=my-colony"), "DaemonSet")["spec"]["template"]["spec"]
    [secret] = [v["secret"] for v in pod["volumes"] if v["name"] == "colony"]
    assert secret == {"secretName": "my-colony", "defaultMode": 0o400, "optional": True}


@pytest.mark.parametrize(
    ("method", "credential"),
    [
        ("secret", {"secretFile": "/etc/coral/colony/colony-secret"}),
        ("bootstrapToken", {"bootstrapTokenFile": "/etc/coral/colony/bootstrap-token"}),
        ("serviceAccount", {"serviceAccountTokenFile": "/var/run/secrets/coral/colony-token/token"}),
    ],
)
def test_the_agent_enrolls_with_the_one_credential_of_the_enrollment_method(
    method: str, credential: dict[str, str]
) -> None:
    colony = agent_config(render(f"colony.enrollment.method={method}"))["colony"]
    files = {k: v for k, v in colony.items() if k in {"secretFile", "bootstrapTokenFile", "serviceAccountTokenFile"}}
    assert files == credential and colony["caFile"] == "/etc/coral/colony/ca.crt"


def test_service_account_enrollment_projects_a_pod_bound_token_even_without_api_access() -> None:
    rendered = render(files=(CHART / "ci" / "service-account-enrollment-values.yaml",))
    pod = one(rendered, "DaemonSet")["spec"]["template"]["spec"]
    [projected] = [v["projected"] for v in pod["volumes"] if v["name"] == "colony-token"]
    assert projected["sources"] == [
        {"serviceAccountToken": {"audience": "coral-colony-prod", "expirationSeconds": 7200, "path": "token"}}
    ]
    assert pod["automountServiceAccountToken"] is False
    assert {"name": "colony-token", "mountPath": "/var/run/secrets/coral/colony-token", "readOnly": True} in pod[
        "containers"
    ][0]["volumeMounts"]


def test_the_colony_checking_service_account_tokens_has_its_account_and_may_only_create_tokenreviews() -> None:
    rendered = render("colony.enabled=true", "colony.enrollment.method=serviceAccount", release="coral-node-agent")
    colony = one(rendered, "Deployment")["spec"]["template"]["spec"]
    assert colony["serviceAccountName"] == "coral-node-agent-colony" and colony["automountServiceAccountToken"]
    args = colony["containers"][0]["args"]
    assert args[args.index("--enroll-service-account") + 1] == "coral-system/coral-node-agent"
    assert args[args.index("--token-audience") + 1] == "coral-colony"
    role = one(rendered, "ClusterRole", "colony")
    assert role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]
    binding = one(rendered, "ClusterRoleBinding", "colony")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "coral-node-agent-colony", "namespace": "coral-system"}
    ]
    assert one(rendered, "ServiceAccount", "colony")["metadata"]["name"] == "coral-node-agent-colony"


@pytest.mark.parametrize("values", [(), ("colony.enabled=true",), ("colony.enrollment.method=serviceAccount",)])
def test_without_service_account_enrollment_in_the_release_the_colony_gets_no_api_rights(
    values: tuple[str, ...],
) -> None:
    rendered = render(*values)
    colony_docs = [d for d in docs(rendered) if d["metadata"]["labels"].get("app.kubernetes.io/component") == "colony"]
    assert not [d for d in colony_docs if d["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}]


@pytest.mark.parametrize(
    ("values", "image"),
    [
        ((), "coral-cri-agent:{app}"),
        (("image.tag=",), "coral-cri-agent:{app}"),
        (("image.tag=9.9.9",), "coral-cri-agent:9.9.9"),
        (("image.tag=9.9.9", f"image.digest=sha256:{'a' * 64}"), f"coral-cri-agent@sha256:{'a' * 64}"),
    ],
)
def test_the_image_tag_defaults_to_the_app_version_and_a_digest_wins(values: tuple[str, ...], image: str) -> None:
    rendered = render("colony.enabled=true", *values)
    image = image.format(app=yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
    for kind in ("DaemonSet", "Deployment"):
        assert one(rendered, kind)["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_two_releases_in_one_namespace_share_no_name() -> None:
    def names(release: str) -> set[tuple[str, str]]:
        rendered = render("colony.enabled=true", "cache.hostPath=/var/lib/" + release, release=release)
        return {(d["kind"], d["metadata"]["name"]) for d in docs(rendered)}

    first, second = names("coral"), names("coral-canary")
    assert first and second and not first & second
    for release in ("coral", "coral-canary"):
        for d in docs(render(release=release)):
            labels = d["metadata"]["labels"]
            assert labels["app.kubernetes.io/instance"] == release
            assert labels["helm.sh/chart"] == "coral-node-agent-0.2.0"
            assert {"app.kubernetes.io/name", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"} <= set(
                labels
            )
    selector = one(render(release="coral-canary"), "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/instance"] == "coral-canary"


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ((), "coral-coral-node-agent"),
        (("nameOverride=agent",), "coral-agent"),
        (("fullnameOverride=coral-nodes",), "coral-nodes"),
    ],
)
def test_names_follow_the_release_and_the_overrides(values: tuple[str, ...], name: str) -> None:
    rendered = render(*values)
    for kind in ("DaemonSet", "ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
        assert one(rendered, kind)["metadata"]["name"] == name
    assert one(render(*values, release="coral-node-agent"), "DaemonSet")["metadata"]["name"] in (
        "coral-node-agent",
        "coral-node-agent-agent",
        "coral-nodes",
    )


def test_pre_provisioned_rbac_keeps_the_agents_api_use() -> None:
    rendered = render("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=coral-node-agent")
    assert {d["kind"] for d in docs(rendered)}.isdisjoint({"ClusterRole", "ClusterRoleBinding", "ServiceAccount"})
    pod = one(rendered, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "coral-node-agent" and pod["automountServiceAccountToken"] is True
    assert agent_config(rendered)["discovery"]["kubernetes"]["api"] == "on"


def test_the_created_binding_names_the_service_account_the_pods_use() -> None:
    rendered = render("serviceAccount.name=agents", "serviceAccount.annotations.example\\.io/role=agent")
    account = one(rendered, "ServiceAccount")
    assert account["metadata"]["name"] == "agents"
    assert account["metadata"]["annotations"] == {"example.io/role": "agent"}
    assert one(rendered, "ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "agents", "namespace": "coral-system"}
    ]
    assert one(rendered, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "agents"
    rules = one(rendered, "ClusterRole")["rules"]
    plain = next(d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()) if d["kind"] == "ClusterRole")
    assert rules == plain["rules"]


def test_without_kubernetes_api_use_the_agent_is_told_off() -> None:
    assert agent_config(render("kubernetesApi.enabled=false"))["discovery"]["kubernetes"]["api"] == "off"


def test_the_colony_is_one_recreated_replica_with_its_service_volume_and_identity() -> None:
    rendered = render("colony.enabled=true", "colony.identitySecret=prod-identity", "colony.auditRetention=400d")
    deployment = one(rendered, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["identity"]["secret"]["secretName"] == "prod-identity"
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "coral-coral-node-agent-colony"
    args = pod["containers"][0]["args"]
    assert args[:2] == ["colony", "start"] and args[args.index("--audit-retention") + 1] == "400d"
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    service = one(rendered, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] != one(rendered, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert one(rendered, "PersistentVolumeClaim")["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    colony = agent_config(rendered)["colony"]
    assert colony["address"] == "coral-coral-node-agent-colony.coral-system.svc:9000"
    claimed = render("colony.enabled=true", "colony.persistence.existingClaim=old-colony")
    assert "PersistentVolumeClaim" not in {d["kind"] for d in docs(claimed)}
    [data] = [v for v in one(claimed, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"]["claimName"] == "old-colony"
    elsewhere = agent_config(render("colony.enabled=true", "colony.address=colony.example.internal:9000"))
    assert elsewhere["colony"]["address"] == "colony.example.internal:9000"


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def test_the_agent_is_probed_by_its_status_command_and_the_colony_by_its_probe_port() -> None:
    rendered = render("colony.enabled=true", "colony.deregisterGrace=5m", "probes.liveness.periodSeconds=60")
    agent = one(rendered, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    status = ["coral", "agent", "status", "--cache", "/var/lib/coral/agent.db", "--probe"]
    assert [agent[p]["exec"]["command"] for p in PROBES] == [[*status, "live"], [*status, "live"], [*status, "ready"]]
    assert agent["livenessProbe"]["periodSeconds"] == 60
    colony = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = colony["args"]
    assert args[args.index("--probe-listen") + 1] == "0.0.0.0:9081"
    assert args[args.index("--deregister-grace") + 1] == "5m"
    assert {"name": "probes", "containerPort": 9081} in colony["ports"]
    assert [colony[p]["httpGet"] for p in PROBES] == [
        {"path": "/healthz", "port": "probes"},
        {"path": "/healthz", "port": "probes"},
        {"path": "/readyz", "port": "probes"},
    ]
    quiet = one(render("probes.liveness.enabled=false"), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert "livenessProbe" not in quiet and "readinessProbe" in quiet


def test_security_context_overrides_merge_over_the_required_capabilities() -> None:
    def container(*values: str) -> dict[str, object]:
        spec: dict[str, object] = one(render(*values), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
        return spec

    merged = container("securityContext.seccompProfile.type=RuntimeDefault")["securityContext"]
    assert isinstance(merged, dict)
    assert merged["seccompProfile"] == {"type": "RuntimeDefault"} and merged["runAsUser"] == 0
    assert set(merged["capabilities"]["add"]) == AGENT_CAPS | {"PERFMON"}
    observe = container("mode=observe-only")["securityContext"]
    assert isinstance(observe, dict) and set(observe["capabilities"]["add"]) == AGENT_CAPS
    pod = one(render("podSecurityContext.seccompProfile.type=RuntimeDefault"), "DaemonSet")["spec"]["template"]
    assert pod["spec"]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}


def test_the_standard_pod_knobs_reach_the_daemonset() -> None:
    rendered = render(
        "podAnnotations.example\\.io/a=one",
        "podLabels.team=sre",
        "extraArgs={--no-events}",
        "extraEnv[0].name=EXTRA",
        "extraEnv[0].value=one",
        "extraVolumes[0].name=extra",
        "extraVolumes[0].emptyDir.medium=Memory",
        "extraVolumeMounts[0].name=extra",
        "extraVolumeMounts[0].mountPath=/extra",
        "updateStrategy.type=OnDelete",
        "priorityClassName=",
        "cache.hostPath=/data/coral",
        "config.log.level=debug",
    )
    daemonset = one(rendered, "DaemonSet")
    template = daemonset["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert template["metadata"]["annotations"]["example.io/a"] == "one"
    assert template["metadata"]["labels"]["team"] == "sre"
    assert container["args"][-1] == "--no-events"
    assert {"name": "EXTRA", "value": "one"} in container["env"]
    assert {"name": "extra", "mountPath": "/extra"} in container["volumeMounts"]
    assert {"name": "extra", "emptyDir": {"medium": "Memory"}} in template["spec"]["volumes"]
    assert daemonset["spec"]["updateStrategy"]["type"] == "OnDelete"
    assert "priorityClassName" not in template["spec"]
    [cache] = [v for v in template["spec"]["volumes"] if v["name"] == "cache"]
    assert cache["hostPath"]["path"] == "/data/coral"
    assert agent_config(rendered)["log"] == {"format": "json", "level": "debug"}


def test_helm_test_pods_check_the_agent_and_the_colony() -> None:
    hooks = [d for d in docs(render("colony.enabled=true")) if d["metadata"].get("annotations", {}).get("helm.sh/hook")]
    assert {d["metadata"]["annotations"]["helm.sh/hook"] for d in hooks} == {"test"}
    containers = [d["spec"]["containers"][0] for d in hooks]
    commands = sorted(" ".join(c.get("command", []) + c["args"]) for c in containers)
    assert commands[0].startswith("agent status --cache /var/lib/coral/agent.db")
    assert commands[1].startswith("python3 -c") and "coral-coral-node-agent-colony.coral-system.svc" in commands[1]
    assert not [d for d in docs(render("tests.enabled=false")) if d["kind"] == "Pod"]


def test_the_namespace_carries_the_pod_security_label() -> None:
    plain = yaml.safe_load((DEPLOY / "namespace.yaml").read_text())
    assert plain["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert "Namespace" not in {d["kind"] for d in docs(render())}
    namespace = one(render("namespace.create=true", "namespace.labels.team=sre"), "Namespace")
    assert namespace["metadata"]["name"] == "coral-system"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert namespace["metadata"]["labels"]["team"] == "sre"


@pytest.fixture(scope="module")
def notes_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart whose NOTES.txt also renders into a ConfigMap (helm template skips NOTES)."""
    chart = tmp_path_factory.mktemp("chart") / "coral-node-agent"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("golden"))
    (chart / "notes").mkdir()
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes" / "NOTES.txt")
    (chart / "templates" / "notes-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes/NOTES.txt") . | quote }}\n'
    )
    return chart


def notes(chart: Path, *values: str) -> str:
    args = ["template", "coral", str(chart), "-n", "coral-system", "--kube-version", KUBE_VERSION]
    done = helm(*args, "--show-only", "templates/notes-probe.yaml", *(a for v in values for a in ("--set", v)))
    assert done.returncode == 0, done.stderr
    text: str = yaml.safe_load(done.stdout)["data"]["notes"]
    return text


def test_notes_say_what_to_do_next(notes_chart: Path) -> None:
    default = notes(notes_chart)
    assert "kubectl -n coral-system exec ds/coral-coral-node-agent -- coral agent status" in default
    assert "create secret generic coral-colony" in default and "helm test coral" in default
    assert "Cache-only" in notes(notes_chart, "colony.address=")
    assert "bind ServiceAccount" in notes(notes_chart, "rbac.create=false")
    assert "Kubernetes API use is off" in notes(notes_chart, "kubernetesApi.enabled=false")
    colony = notes(notes_chart, "colony.enabled=true", "colony.colonyId=staging")
    host = "coral-coral-node-agent-colony.coral-system.svc"
    assert f"coral colony init ./colony --colony-id staging --host {host}" in colony
    assert "create secret generic coral-colony-identity --from-file=./colony" in colony


# --- metrics (docs/metrics.md) ---


def test_metrics_are_served_on_the_pods_port_by_default_and_not_at_all_when_disabled() -> None:
    def served(*values: str) -> tuple[str | None, list[dict[str, object]]]:
        rendered = render(*values)
        config = yaml.safe_load(one(rendered, "ConfigMap")["data"]["agent.yaml"])
        container = one(rendered, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
        return config.get("metrics", {}).get("listen"), container.get("ports", [])

    assert served() == ("0.0.0.0:9102", [{"name": "metrics", "containerPort": 9102}])
    assert served("metrics.port=9200") == ("0.0.0.0:9200", [{"name": "metrics", "containerPort": 9200}])
    assert served("metrics.enabled=false") == (None, [])


def test_the_colony_serves_metrics_on_its_own_port_and_service() -> None:
    rendered = render("colony.enabled=true")
    container = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    service_ports = {p["name"]: p["port"] for p in one(rendered, "Service", "colony")["spec"]["ports"]}
    assert (args[args.index("--metrics-listen") + 1], service_ports) == (
        "0.0.0.0:9091",
        {"grpc": 9000, "agents": 9001, "metrics": 9091},
    )
    disabled = one(render("colony.enabled=true", "metrics.enabled=false"), "Deployment")
    assert "--metrics-listen" not in disabled["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_colony_tells_agents_the_port_its_service_exposes_for_them() -> None:
    """Enrolled agents dial the port the colony names at enrollment: the pod's and the Service's must agree."""
    rendered = render("colony.enabled=true", "colony.service.agentPort=9443")
    container = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    ports = {p["name"]: p for p in one(rendered, "Service", "colony")["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args[args.index("--agent-listen") + 1] == "0.0.0.0:9443"
    assert (ports["agents"]["port"], ports["agents"]["targetPort"], container_ports["agents"]) == (9443, "agents", 9443)


def test_service_monitors_select_the_agents_and_the_colony_by_their_metrics_ports() -> None:
    rendered = render(
        "colony.enabled=true", "metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=kps"
    )
    monitors = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in docs(rendered)
        if d["kind"] == "ServiceMonitor"
    }
    agents = one(rendered, "Service", "node-agent")
    daemonset = one(rendered, "DaemonSet")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert set(monitors) == {"node-agent", "colony"}
    assert agents["spec"]["clusterIP"] == "None" and agents["spec"]["selector"].items() <= pod_labels.items()
    for component, monitor in monitors.items():
        service = one(rendered, "Service", component)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        assert monitor["metadata"]["labels"]["release"] == "kps"
    assert not [d for d in docs(render()) if d["kind"] == "ServiceMonitor"]  # off by default: no CRD needed


def test_the_network_policy_admits_only_its_peers_to_the_agents_metrics_port() -> None:
    policy = one(render("metrics.networkPolicy.enabled=true"), "NetworkPolicy")
    (rule,) = policy["spec"]["ingress"]
    assert rule == {
        "ports": [{"port": "metrics", "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    }
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "node-agent"


def test_notes_say_where_the_metrics_are_and_what_the_operator_must_match(notes_chart: Path) -> None:
    default = notes(notes_chart)
    monitored = notes(notes_chart, "colony.enabled=true", "metrics.serviceMonitor.enabled=true")
    labelled = notes(notes_chart, "metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=kps")
    assert "the agents on their pods' port 9102." in default and "ServiceMonitors" not in default
    assert "the colony on its Service's port 9091" in monitored and "set metrics.serviceMonitor.labels" in monitored
    assert '{"release":"kps"}' in labelled
    assert "Prometheus metrics" not in notes(notes_chart, "metrics.enabled=false")
