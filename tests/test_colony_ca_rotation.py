"""The colony CA rotates with an overlap window: ``coral colony ca rotate``, a certificate lifetime, ``finish``.

The files first (what each step writes and refuses), then one timeline against what ``coral colony start``
runs, over real TLS on loopback and the real clock (certificates are checked against it), with 6 s agent
certificates: agents enroll under the first CA, the CA rotates, the colony restarts, a running agent renews
into the new CA, the rotation finishes, the colony restarts again; the agents' pinned CA file is never
updated, as when their Secret lags behind.
"""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from coral_base.errors import ConfigError
from coral_cli import main
from coral_colony.ca_rotation import finish_ca_rotation, rotate_ca
from coral_colony.identity import load_colony
from tests.test_colony_tls import init

LIFETIME_S = 6.0  # agents renew after 4 s


def certificates(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the files -----------------------------------------------------------------------------------


def test_rotate_puts_a_new_signing_ca_first_and_keeps_the_server_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "colony"
    init(directory)
    [previous] = certificates(directory / "ca.crt")
    server = (directory / "server.crt").read_bytes()
    assert main(["colony", "ca", "rotate", "--dir", str(directory)]) == 0
    new, kept = certificates(directory / "ca.crt")
    _, signing = load_colony(directory).signing_ca()
    assert (kept, signing, new.subject != previous.subject) == (previous, new, True)
    assert ((directory / "server.crt").read_bytes(), mode(directory / "ca.key"), mode(directory / "ca.crt")) == (
        server,
        0o600,
        0o644,
    )
    assert "coral colony ca finish --dir" in capsys.readouterr().out


def test_a_second_rotate_is_refused_until_the_first_finishes(tmp_path: Path) -> None:
    directory = tmp_path / "colony"
    init(directory)
    rotate_ca(load_colony(directory), now=datetime.datetime.now(datetime.UTC))
    with pytest.raises(ConfigError, match="already in progress"):
        rotate_ca(load_colony(directory), now=datetime.datetime.now(datetime.UTC))


def test_a_rotate_interrupted_between_its_writes_runs_again_from_the_ca_of_the_key(tmp_path: Path) -> None:
    directory = tmp_path / "colony"
    init(directory)
    [previous] = certificates(directory / "ca.crt")
    key = (directory / "ca.key").read_bytes()
    rotate_ca(load_colony(directory), now=datetime.datetime.now(datetime.UTC))
    (directory / "ca.key").write_bytes(key)  # as if it stopped before writing the new key
    rotate_ca(load_colony(directory), now=datetime.datetime.now(datetime.UTC))
    assert certificates(directory / "ca.crt")[1:] == [previous]
    load_colony(directory).signing_ca()  # consistent again


def test_finish_signs_the_server_certificate_with_the_new_ca_and_drops_the_previous_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "colony"
    init(directory)
    server_key = (directory / "server.key").read_bytes()
    rotate_ca(load_colony(directory), now=datetime.datetime.now(datetime.UTC))
    new = certificates(directory / "ca.crt")[0]
    assert main(["colony", "ca", "finish", "--dir", str(directory), "--min-overlap", "0s"]) == 0
    [server] = certificates(directory / "server.crt")
    server.verify_directly_issued_by(new)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    private = serialization.load_pem_private_key(server_key, None)
    assert (certificates(directory / "ca.crt"), [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]) == (
        [new],
        ["127.0.0.1"],
    )
    assert (server.public_key() == private.public_key(), (directory / "server.key").read_bytes() == server_key) == (
        True,
        True,
    )
    assert "the previous CA is dropped" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("rotated", "min_overlap", "message"),
    [
        (False, datetime.timedelta(0), "no CA rotation is in progress"),
        (True, datetime.timedelta(hours=24), r"started \ds ago, less than --min-overlap \(1d\)"),
    ],
)
def test_finish_is_refused_without_a_rotation_or_before_the_overlap(
    tmp_path: Path, rotated: bool, min_overlap: datetime.timedelta, message: str
) -> None:
    directory = tmp_path / "colony"
    init(directory)
    if rotated:
        rotate_ca(load_colony(directory), now=datetime.datetime.now(datetime.UTC))
    bundle = (directory / "ca.crt").read_bytes()
    with pytest.raises(ConfigError, match=message):
        finish_ca_rotation(load_colony(directory), now=datetime.datetime.now(datetime.UTC), min_overlap=min_overlap)
    assert (directory / "ca.crt").read_bytes() == bundle


# -- agents across a rotation, against real colonies ---------------------------------------------
