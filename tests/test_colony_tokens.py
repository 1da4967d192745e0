"""Operator tokens: created once, stored hashed, revoked without a restart."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from coral_base.errors import ConfigError
from coral_colony.tokens import TOKENS_FILE, OperatorTokens


def test_a_token_authenticates_its_name_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    tokens = OperatorTokens(tmp_path)
    token = tokens.create("alice@sre")
    stored = (tmp_path / TOKENS_FILE).read_text()
    assert (tokens.authenticate(token), token in stored, stat.S_IMODE((tmp_path / TOKENS_FILE).stat().st_mode)) == (
        "alice@sre",
        False,
        0o600,
    )
    assert tokens.authenticate("coral_not-a-token") is None and tokens.authenticate("") is None


def test_a_running_colony_sees_new_and_revoked_tokens_at_once(tmp_path: Path) -> None:
    server_view = OperatorTokens(tmp_path)
    assert server_view.authenticate("x") is None
    bob = OperatorTokens(tmp_path).create("bob")
    assert server_view.authenticate(bob) == "bob"
    OperatorTokens(tmp_path).revoke("bob")
    assert server_view.authenticate(bob) is None


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda t: t.create("has space"), "letters, digits"),
        (lambda t: (t.create("carol"), t.create("carol")), "revoke it first"),
        (lambda t: t.revoke("nobody"), "no token named 'nobody'"),
    ],
)
def test_mistakes_get_errors_that_say_what_to_do(tmp_path: Path, action: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        action(OperatorTokens(tmp_path))  # type: ignore[operator]


def test_list_shows_names_only(tmp_path: Path) -> None:
    tokens = OperatorTokens(tmp_path)
    tokens.create("zed")
    tokens.create("amy")
    assert [t.name for t in tokens.list()] == ["amy", "zed"]
