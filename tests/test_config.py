"""Configuration: sources merge in one documented order; errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from coral_base.durations import parse_duration
from coral_base.errors import ConfigError
from cri_agent.config import flags_to_settings, load_settings

DESIGN_EXAMPLE = """
agent: {mode: passive, id: "node-agent-{{ NODE_NAME }}"}
discovery:
  cri: {socket: /run/containerd/containerd.sock}
  kubernetes:
    includeNamespaces: [payments, checkout]
    excludeNamespaces: [kube-system]
    includeLabels: {coral.io/enabled: "true"}
    excludeLabels: {}
    pollInterval: 30s
    resyncInterval: 5m
overrides:
  - selector: {namespace: payments, podLabel: app=payments-api}
    service: {name: payments-api, type: http, health: {endpoint: /healthz, interval: 5s}}
services: []
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent-config.yaml"
    path.write_text(DESIGN_EXAMPLE)
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("2", 2.0), ("1.5s", 1.5)],
)
def test_durations_parse_go_style_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-1s", "0s", "soon"])
def test_malformed_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_the_design_example_loads_into_discovery_rules(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-a")
    settings = load_settings(config_file)
    rules = settings.rules()
    override = rules.overrides[0]
    assert (
        settings.agent_id,
        settings.discovery.kubernetes.resync_interval,
        rules.filters.include_namespaces,
        dict(override.selector.pod_labels),
        override.service.health.interval_s,
    ) == (
        "node-agent-node-a",
        300.0,
        frozenset({"payments", "checkout"}),
        {"app": "payments-api"},
        5.0,
    )


def test_environment_beats_the_file_and_flags_beat_the_environment(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORAL_DISCOVERY__KUBERNETES__RESYNCINTERVAL", "7s")
    monkeypatch.setenv("CORAL_DISCOVERY__CRI__SOCKET", "/env.sock")
    settings = load_settings(config_file, flags=flags_to_settings(cri_socket=Path("/flag.sock")))
    assert (settings.discovery.kubernetes.resync_interval, settings.discovery.cri.socket) == (
        7.0,
        Path("/flag.sock"),
    )


def test_flags_replace_filter_lists(config_file: Path) -> None:
    flags = flags_to_settings(exclude_namespaces=["monitoring"], include_labels=["team=payments"])
    kubernetes = load_settings(config_file, flags=flags).discovery.kubernetes
    assert (
        kubernetes.exclude_namespaces,
        kubernetes.include_labels,
        kubernetes.include_namespaces,
    ) == (
        ("monitoring",),
        {"team": "payments"},
        ("payments", "checkout"),
    )


def test_override_file_appends_to_the_config_overrides(config_file: Path, tmp_path: Path) -> None:
    extra = tmp_path / "overrides.yaml"
    extra.write_text(
        "overrides:\n  - selector: {namespace: checkout}\n    service: {type: grpc}\n"
        "services:\n  - {name: node-exporter, port: 9100, type: metrics}\n"
    )
    settings = load_settings(config_file, override_file=extra)
    assert (
        [o.selector.namespace for o in settings.overrides],
        [s.name for s in settings.services],
    ) == (
        ["payments", "checkout"],
        ["node-exporter"],
    )


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("discovery: {kubernetes: {resyncInterval: soon}}", "discovery.kubernetes.resyncInterval"),
        ("discovery: {kubernetes: {includeNamespace: [a]}}", "includeNamespace"),
        ("services: [{name: x, port: 70000}]", "services.0.port"),
        ("agent: {mode: active}", "agent.mode"),
        ("- just\n- a list", "top level must be a mapping"),
    ],
)
def test_invalid_configuration_names_the_file_and_the_key(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=str(path)) as raised:
        load_settings(path)
    assert fragment in str(raised.value)


def test_malformed_label_flag_says_what_is_expected() -> None:
    with pytest.raises(ConfigError, match="not key=value"):
        flags_to_settings(include_labels=["team"])


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.yaml")


def test_colony_secret_comes_from_the_environment_or_a_file_and_never_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "colony-secret"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("CORAL_COLONY__SECRET", "from-env")
    from_env = load_settings(None, flags={"colony": {"address": "colony:9000"}})
    monkeypatch.delenv("CORAL_COLONY__SECRET")
    from_file = load_settings(None, flags={"colony": {"address": "colony:9000", "secretFile": str(secret_file)}})
    assert (from_env.colony.resolved_secret(), from_file.colony.resolved_secret(), "from-env" in repr(from_env)) == (
        "from-env",
        "from-file",
        False,
    )


def test_a_colony_address_without_a_secret_says_where_to_put_one() -> None:
    settings = load_settings(None, flags={"colony": {"address": "colony:9000"}})
    with pytest.raises(ConfigError, match=r"CORAL_COLONY__SECRET, colony\.secretFile, colony\.bootstrapTokenFile"):
        settings.colony.resolved_secret()


def test_the_documented_error_message_is_given_word_for_word(tmp_path: Path) -> None:
    path = tmp_path / "agent-config.yaml"
    path.write_text("discovery: {kubernetes: {resyncInterval: soon}}")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert str(raised.value) == (
        f"invalid configuration in {path} (or CORAL_* environment): discovery.kubernetes.resyncInterval: "
        "Value error, 'soon' is not a duration (e.g. 500ms, 30s, 5m, 1h30m)"
    )


def test_every_problem_is_named_at_once_unknown_keys_with_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("ops: {nice: 20, bogus: 1}\nlog: {level: INFO}\nservices: [{port: 80}]")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert str(raised.value).split(": ", 1)[1].split("; ") == [
        "services.0.name: Field required",
        "ops.nice: Input should be less than or equal to 19",
        "ops.bogus: unknown key (expected one of: observeOnly, defaultDuration, maxDuration, maxConcurrent, "
        "ratePerMinute, maxBytes, maxPackets, maxFrequencyHz, nice, profileMaxBytes, profileDir)",
        "log.level: Input should be 'debug', 'info', 'warning' or 'error'",
    ]


def test_environment_values_are_typed_by_the_key_they_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORAL_DISCOVERY__CRI__EVENTS", "off")
    monkeypatch.setenv("coral_discovery__kubernetes__include_namespaces", '["a", "b"]')
    monkeypatch.setenv("CORAL_OPS", '{"maxConcurrent": 3}')
    monkeypatch.setenv("CORAL_OPS__NICE", "5")
    monkeypatch.setenv("CORAL_TOKEN", "an operator command's variable, not the agent's")
    settings = load_settings(None)
    assert (
        settings.discovery.cri.events,
        settings.discovery.kubernetes.include_namespaces,
        (settings.ops.max_concurrent, settings.ops.nice),
    ) == (False, ("a", "b"), (3, 5))


def test_a_list_from_the_environment_that_is_not_json_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORAL_DISCOVERY__KUBERNETES__EXCLUDENAMESPACES", "kube-system")
    with pytest.raises(ConfigError, match=r"discovery\.kubernetes\.excludeNamespaces: 'kube-system' .* not JSON"):
        load_settings(None)


def test_a_flag_beats_the_file_however_the_file_spells_the_key(config_file: Path) -> None:
    config_file.write_text("discovery: {kubernetes: {resync_interval: 1m, include_labels: {a: b}}}")
    flags = flags_to_settings(resync_interval="5s", include_labels=["team=web"])
    kubernetes = load_settings(config_file, flags=flags).discovery.kubernetes
    assert (kubernetes.resync_interval, dict(kubernetes.include_labels)) == (5.0, {"team": "web"})


def test_a_malformed_pod_label_is_refused_when_the_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("overrides: [{selector: {podLabel: payments}, service: {type: http}}]")
    with pytest.raises(ConfigError, match=r"overrides\.0\.selector\.podLabel: 'payments' is not key=value"):
        load_settings(path)
