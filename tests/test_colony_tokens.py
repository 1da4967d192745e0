"""Colony tokens: created once, stored hashed, scoped, revoked without a restart, never written through a symlink."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from coral_base.errors import ConfigError
from coral_base.vocabulary import Scope
from coral_colony.model import Principal
from coral_colony.tokens import LEGACY_SCOPES, OPERATOR_SCOPES, TOKENS_FILE, OperatorTokens

READ = frozenset({Scope.READ})


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_authenticates_its_name_and_scopes_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    tokens = OperatorTokens(tmp_path / "colony")
    token = tokens.create("alice@sre", scopes=OPERATOR_SCOPES)
    stored = (tmp_path / "colony" / TOKENS_FILE).read_text()
    principal = tokens.authenticate(token)
    assert principal is not None and (principal.name, principal.scopes) == ("alice@sre", OPERATOR_SCOPES)
    assert token not in stored
    assert stat.S_IMODE((tmp_path / "colony" / TOKENS_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "colony").stat().st_mode) == 0o700
    assert tokens.authenticate("coral_not-a-token") is None and tokens.authenticate("") is None


def test_a_running_colony_sees_new_and_revoked_tokens_at_once(tmp_path: Path) -> None:
    server_view = OperatorTokens(tmp_path)
    assert server_view.authenticate("x") is None
    bob = OperatorTokens(tmp_path).create("bob", scopes=READ)
    assert (p := server_view.authenticate(bob)) is not None and p.name == "bob"
    OperatorTokens(tmp_path).revoke("bob")
    assert server_view.authenticate(bob) is None


def test_a_refusal_names_the_missing_scope_or_the_namespace() -> None:
    reader = Principal("rita", frozenset({Scope.READ, Scope.OPERATE}), frozenset({"shop"}))
    assert reader.refusal(Scope.READ) is None
    assert reader.refusal(Scope.OPERATE, namespace="shop") is None
    assert reader.refusal(Scope.AUDIT) == "token 'rita' lacks the audit scope (it has: operate, read)"
    assert reader.refusal(Scope.OPERATE, namespace="payments") == (
        "token 'rita' is limited to namespace(s) shop: payments is outside them"
    )
    assert Principal("any", OPERATOR_SCOPES).refusal(Scope.OPERATE, namespace="payments") is None


def test_a_bootstrap_token_enrolls_only_and_expires(tmp_path: Path) -> None:
    clock = Clock()
    tokens = OperatorTokens(tmp_path, clock=clock)
    token = tokens.create("nodes", scopes={Scope.ENROLL}, ttl_s=3600)
    principal = tokens.authenticate(token)
    assert principal is not None and principal.scopes == {Scope.ENROLL}
    assert principal.refusal(Scope.READ) is not None
    clock.now += 3600
    assert tokens.authenticate(token) is None


def test_a_token_from_before_scopes_keeps_what_it_could_do(tmp_path: Path) -> None:
    token = "coral_legacy"
    digest = __import__("hashlib").sha256(token.encode()).hexdigest()
    (tmp_path / TOKENS_FILE).write_text(f"tokens:\n  old:\n    sha256: {digest}\n    created: 1.0\n")
    principal = OperatorTokens(tmp_path).authenticate(token)
    assert principal is not None and principal.scopes == LEGACY_SCOPES and not principal.namespaces


def test_a_symlink_planted_for_the_tokens_file_is_replaced_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("tokens: {}\n")
    colony = tmp_path / "colony"
    colony.mkdir()
    (colony / TOKENS_FILE).symlink_to(target)
    token = OperatorTokens(colony).create("eve", scopes=READ)
    assert target.read_text() == "tokens: {}\n", "the file the link pointed at is untouched"
    assert not (colony / TOKENS_FILE).is_symlink()
    assert (p := OperatorTokens(colony).authenticate(token)) is not None and p.name == "eve"


def test_tokens_mounted_from_a_kubernetes_secret_are_read_and_followed_when_it_changes(tmp_path: Path) -> None:
    """A Secret volume: ``operator-tokens.yaml -> ..data/operator-tokens.yaml``, ``..data -> ..<timestamp>``."""
    made = tmp_path / "made"
    alice = OperatorTokens(made).create("alice", scopes=READ)
    bob = OperatorTokens(made).create("bob", scopes=READ)
    volume = tmp_path / "volume"
    first, second = volume / "..2026_11_30_01", volume / "..2026_11_30_02"
    first.mkdir(parents=True)
    second.mkdir()
    (first / TOKENS_FILE).write_text((made / TOKENS_FILE).read_text())
    OperatorTokens(made).revoke("alice")
    (second / TOKENS_FILE).write_text((made / TOKENS_FILE).read_text())
    (volume / "..data").symlink_to(first.name)
    (volume / TOKENS_FILE).symlink_to(f"..data/{TOKENS_FILE}")
    colony = OperatorTokens(volume)
    assert (p := colony.authenticate(alice)) is not None and p.name == "alice"
    (volume / "..data_tmp").symlink_to(second.name)
    (volume / "..data_tmp").replace(volume / "..data")  # how the kubelet updates a Secret volume
    assert colony.authenticate(alice) is None, "the revocation reached the running colony"
    assert (p := colony.authenticate(bob)) is not None and p.name == "bob"


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda t: t.create("has space", scopes=READ), "letters, digits"),
        (lambda t: (t.create("carol", scopes=READ), t.create("carol", scopes=READ)), "revoke it first"),
        (lambda t: t.revoke("nobody"), "no token named 'nobody'"),
        (lambda t: t.create("dan", scopes=()), "say what 'dan' may do"),
        (lambda t: t.create("erin", scopes={Scope.ENROLL, Scope.READ}, ttl_s=60), "can do nothing else"),
        (lambda t: t.create("fred", scopes={Scope.ENROLL}), "must expire within 7 days"),
        (lambda t: t.create("gail", scopes=READ, namespaces=["Shop!"]), "not a namespace name: Shop!"),
    ],
)
def test_mistakes_get_errors_that_say_what_to_do(tmp_path: Path, action: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        action(OperatorTokens(tmp_path))  # type: ignore[operator]


def test_list_shows_names_scopes_and_namespaces(tmp_path: Path) -> None:
    tokens = OperatorTokens(tmp_path)
    tokens.create("zed", scopes=READ, namespaces=["shop"])
    tokens.create("amy", scopes=OPERATOR_SCOPES)
    assert [(t.name, t.scopes, t.namespaces) for t in tokens.list()] == [
        ("amy", OPERATOR_SCOPES, frozenset()),
        ("zed", READ, frozenset({"shop"})),
    ]
