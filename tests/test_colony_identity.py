"""`coral colony init`: a private directory, files never written through a planted symlink."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from coral_base.errors import ConfigError
from coral_colony.identity import init_colony, load_colony


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_0600_in_a_0700_directory_and_public_files_are_readable(tmp_path: Path) -> None:
    directory = tmp_path / "colony"
    directory.mkdir(mode=0o755)
    identity = init_colony(directory, colony_id="prod", hosts=["localhost"])
    assert mode(directory) == 0o700
    assert {p.name: mode(p) for p in directory.iterdir()} == {
        "ca.crt": 0o644,
        "ca.key": 0o600,
        "server.crt": 0o644,
        "server.key": 0o600,
        "colony-secret": 0o600,
        "colony.yaml": 0o644,
    }
    assert load_colony(directory).colony_id == identity.colony_id == "prod"


def test_a_symlink_planted_where_a_key_goes_is_replaced_not_written_through(tmp_path: Path) -> None:
    directory = tmp_path / "colony"
    directory.mkdir()
    stolen = tmp_path / "readable-by-the-attacker"
    stolen.write_text("")
    (directory / "ca.key").symlink_to(stolen)
    init_colony(directory, colony_id="prod", hosts=["localhost"])
    assert stolen.read_text() == ""
    assert not (directory / "ca.key").is_symlink() and mode(directory / "ca.key") == 0o600


def test_an_existing_colony_or_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    init_colony(tmp_path / "colony", colony_id="prod", hosts=["localhost"])
    with pytest.raises(ConfigError, match="already holds a colony"):
        init_colony(tmp_path / "colony", colony_id="other", hosts=["localhost"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(ConfigError, match="a symlink is refused"):
        init_colony(tmp_path / "link", colony_id="other", hosts=["localhost"])
    assert list((tmp_path / "empty").iterdir()) == []
