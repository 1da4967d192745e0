"""ServiceAccount enrollment's decisions: what a TokenReview status means, whose tokens count, where the API is.

The answers the real kube-apiserver gives are exercised end to end in
integration/test_service_account_enrollment.py; here the pure verdict is
tested as a table, the kubeconfig and in-cluster loading on real files, and
the reviewer's own bounds (malformed tokens, a silent API, calls in flight)
against a real socket that never answers: no HTTP layer is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from coral_base.errors import ConfigError
from coral_cli import main
from coral_colony.identity import init_colony
from coral_colony.kube_api import ApiServer
from coral_colony.model import BoundToken
from coral_colony.signer import EnrollmentRefused
from coral_colony.token_review import (
    NODE_NAME,
    POD_NAME,
    ServiceAccountName,
    TokenReviewer,
    TokenReviewStatus,
    UserInfo,
    verdict,
)

AGENTS = ServiceAccountName("coral-system", "coral-node-agent")
USER = "system:serviceaccount:coral-system:coral-node-agent"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def reviewed(
    *,
    authenticated: bool = True,
    username: str = USER,
    audiences: tuple[str, ...] = ("coral-colony",),
    node: list[str] | None = None,
    error: str = "",
) -> TokenReviewStatus:
    extra = {POD_NAME: ["agent-x1"], **({NODE_NAME: node} if node is not None else {})}
    status = TokenReviewStatus(
        authenticated=authenticated, audiences=list(audiences), user=UserInfo(username=username, extra=extra)
    )
    if error:
        status["error"] = error
    return status


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (reviewed(node=["node-a"]), BoundToken(USER, "node-a", "agent-x1")),
        (reviewed(authenticated=False, error="token has expired"), "did not authenticate the ServiceAccount token"),
        (reviewed(node=["node-a"], audiences=("other",)), "not meant for audience 'coral-colony'"),
        (
            reviewed(node=["node-a"], username="system:serviceaccount:shop:web"),
            "system:serviceaccount:shop:web is not a ServiceAccount this colony enrolls",
        ),
        (reviewed(node=["node-a"], username="admin"), "admin is not a ServiceAccount this colony enrolls"),
        (reviewed(), "names no node"),
        (reviewed(node=[]), "names no node"),
        (reviewed(node=["node-a", "node-b"]), "names no node"),
        (TokenReviewStatus(), "did not authenticate"),
    ],
    ids=["bound", "unauthenticated", "audience", "other-account", "not-an-account", "no-node", "empty", "two", "none"],
)
def test_a_token_enrolls_only_authenticated_for_the_audience_of_an_allowed_account_and_bound_to_one_node(
    status: TokenReviewStatus, outcome: BoundToken | str
) -> None:
    got = verdict(status, audience="coral-colony", allowed=frozenset({AGENTS}))
    if isinstance(outcome, BoundToken):
        assert got == outcome
    else:
        assert isinstance(got, EnrollmentRefused) and outcome in str(got)


def test_the_audit_names_the_account_and_the_pod_never_the_token() -> None:
    assert BoundToken(USER, "node-a", "agent-x1").credential() == f"{USER} pod coral-system/agent-x1"


@pytest.mark.parametrize("text", ["coral-system", "coral-system/", "/agent", "Coral/agent", "a/b/c", "a b/c"])
def test_a_service_account_is_namespace_slash_name(text: str) -> None:
    with pytest.raises(ConfigError, match="NAMESPACE/NAME"):
        ServiceAccountName.parse(text)


def test_a_service_account_names_its_tokens_user() -> None:
    assert ServiceAccountName.parse("coral-system/coral-node-agent").username == USER


# -- where the API is ------------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    """A real CA certificate to trust (the colony's, for want of an apiserver's)."""
    return init_colony(tmp_path / "colony", colony_id="c", hosts=["localhost"]).ca_cert


def kubeconfig(path: Path, *, cluster: dict[str, object], user: dict[str, object]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_a_kubeconfig_token_file_is_relative_to_the_kubeconfig_and_read_at_each_call(tmp_path: Path, ca: Path) -> None:
    (tmp_path / "token").write_text("first\n")
    path = kubeconfig(
        tmp_path / "kubeconfig",
        cluster={
            "server": "https://127.0.0.1:6443/",
            "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
        },
        user={"tokenFile": "token"},
    )
    api = ApiServer.from_kubeconfig(path)
    assert api.server == "https://127.0.0.1:6443" and api.bearer is not None and api.bearer() == "first"
    (tmp_path / "token").write_text("rotated\n")
    assert api.bearer() == "rotated"


@pytest.mark.parametrize(
    ("cluster", "user", "message"),
    [
        ({"server": "http://127.0.0.1:8080"}, {"token": "t"}, "must be an https:// URL"),
        ({"server": "https://a", "insecure-skip-tls-verify": True}, {"token": "t"}, "insecure-skip-tls-verify"),
        ({"server": "https://a"}, {"exec": {"command": "aws"}}, "exec and auth-provider credentials"),
        ({"server": "https://a"}, {}, "no token, tokenFile or client certificate"),
        ({"server": "https://a", "certificate-authority": "missing.crt"}, {"token": "t"}, "CA"),
    ],
)
def test_a_kubeconfig_the_colony_cannot_use_safely_is_refused_at_start(
    tmp_path: Path, cluster: dict[str, object], user: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ApiServer.from_kubeconfig(kubeconfig(tmp_path / "kubeconfig", cluster=cluster, user=user))


def test_in_cluster_uses_the_pods_service_and_account(tmp_path: Path, ca: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(ca.read_bytes())
    (tmp_path / "token").write_text("pod-token")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    api = ApiServer.in_cluster(tmp_path, env)
    assert api.server == "https://10.0.0.1:443" and api.bearer is not None and api.bearer() == "pod-token"
    with pytest.raises(ConfigError, match="--kubeconfig"):
        ApiServer.in_cluster(tmp_path, {})
    with pytest.raises(ConfigError, match="automountServiceAccountToken"):
        ApiServer.in_cluster(tmp_path / "nowhere", env)


# -- the reviewer's bounds, against a real socket that never answers ----------------------------------


@pytest.fixture
def silent_api(tmp_path: Path, ca: Path) -> Iterator[ApiServer]:
    """An API server address whose listener never answers (the TLS handshake waits forever)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        path = kubeconfig(
            tmp_path / "kubeconfig", cluster={"server": f"https://127.0.0.1:{port}"}, user={"token": "colony"}
        )
        yield ApiServer.from_kubeconfig(path)


def test_something_that_is_not_a_jwt_is_refused_without_asking_the_api(silent_api: ApiServer) -> None:
    reviewer = TokenReviewer(silent_api, allowed=[AGENTS], timeout=30.0)
    started = time.monotonic()
    for token in ("", "colony-secret", "a.b", "x" * 20_000 + ".y.z"):
        assert "not a JWT" in str(asyncio.run(reviewer(token)))
    assert time.monotonic() - started < 1.0


def test_a_silent_api_is_a_refusal_after_the_timeout_that_says_so(
    silent_api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    reviewer = TokenReviewer(silent_api, allowed=[AGENTS], timeout=0.3)
    started = time.monotonic()
    refused = asyncio.run(reviewer(JWT))
    assert time.monotonic() - started < 2.0
    assert isinstance(refused, EnrollmentRefused) and "could not check the ServiceAccount token" in str(refused)
    assert "enrollment.token_review_failed" in caplog.text and JWT not in caplog.text


def test_reviews_in_flight_are_bounded_and_a_caller_over_the_bound_is_refused_at_once(silent_api: ApiServer) -> None:
    reviewer = TokenReviewer(silent_api, allowed=[AGENTS], timeout=0.5, max_in_flight=2)

    async def three() -> list[BoundToken | EnrollmentRefused]:
        return list(await asyncio.gather(reviewer(JWT), reviewer(JWT), reviewer(JWT)))

    answers = [str(a) for a in asyncio.run(three())]
    assert sum("being checked already" in a for a in answers) == 1
    assert reviewer._in_flight == 0


@pytest.mark.parametrize(
    "flags",
    [["--kubeconfig", "/k"], ["--token-audience", "x"], ["--enroll-service-account", "no-slash"]],
)
def test_colony_start_refuses_service_account_flags_that_do_not_fit(
    tmp_path: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    init_colony(tmp_path / "colony", colony_id="c", hosts=["localhost"])
    assert main(["colony", "start", "--dir", str(tmp_path / "colony"), *flags]) != 0
    assert "--enroll-service-account" in capsys.readouterr().err
