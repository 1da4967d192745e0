"""The agent's identity: a key made in a child, a record that survives restarts, a certificate naming the node."""

from __future__ import annotations

import asyncio
import datetime
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coral_colony.signer import EnrollmentRefused, peer_agent, pem_fingerprint, sign_agent
from cri_agent import identity
from cri_agent.identity import Identity, IdentityError

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coral colony prod CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def test_the_key_is_made_in_a_child_and_the_colony_signs_a_certificate_naming_the_node() -> None:
    key_pem, csr_pem = asyncio.run(identity.new_key("whatever-the-agent-asks"))
    ca_key, ca_cert = make_ca()
    signed = sign_agent(csr_pem.encode(), ca_key=ca_key, ca_cert=ca_cert, colony_id="prod", node_name="node-a", now=NOW)
    cert = x509.load_pem_x509_certificate(signed.certificate_pem)
    assert signed.agent_id == "node-agent-node-a"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-agent-node-a"  # not the CSR's
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://prod/node/node-a"]
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    private = serialization.load_pem_private_key(key_pem.encode(), None)
    assert cert.public_key() == private.public_key()
    cert.verify_directly_issued_by(ca_cert)
    assert signed.not_after - NOW.timestamp() == 24 * 3600
    assert signed.renew_after - NOW.timestamp() == 16 * 3600
    assert pem_fingerprint(signed.certificate_pem) == signed.fingerprint


@pytest.mark.parametrize(
    ("csr", "node", "message"),
    [
        (b"not a csr", "node-a", "not a PEM certificate signing request"),
        (None, "Node_A!", "not a Kubernetes node name"),
        ("rsa", "node-a", "must be ECDSA"),
    ],
)
def test_the_signer_refuses_what_it_cannot_vouch_for(csr: bytes | str | None, node: str, message: str) -> None:
    ca_key, ca_cert = make_ca()
    if csr is None:
        csr = asyncio.run(identity.new_key("a"))[1].encode()
    elif csr == "rsa":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(rsa_key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
    assert isinstance(csr, bytes)
    with pytest.raises(EnrollmentRefused, match=message):
        sign_agent(csr, ca_key=ca_key, ca_cert=ca_cert, colony_id="prod", node_name=node, now=NOW)


def test_the_peer_is_read_from_its_verified_certificate_only() -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n"
    context = {
        "x509_common_name": [b"node-agent-node-a"],
        "peer_spiffe_id": [b"spiffe://prod/node/node-a"],
        "x509_pem_cert": [pem],
    }
    peer = peer_agent(context, colony_id="prod")
    assert peer is not None and (peer.agent_id, peer.node_name) == ("node-agent-node-a", "node-a")
    assert peer.fingerprint == pem_fingerprint(pem) != ""
    assert peer_agent(context, colony_id="staging") is None  # another colony's certificate
    assert peer_agent({**context, "x509_common_name": [b"node-agent-node-b"]}, colony_id="prod") is None
    assert peer_agent({}, colony_id="prod") is None  # no client certificate at all


def record() -> Identity:
    return Identity(colony_id="prod", agent_id="node-agent-a", node_name="a", key_pem="KEY")


def test_the_record_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    path = identity.path_for(tmp_path / "cache" / "agent.db")
    signed = record().signed(
        agent_id="node-agent-node-a",
        agent_address="colony:9001",
        certificate_pem="CERT",
        ca_pem="CA",
        not_after=10.0,
        renew_after=7.0,
        at=1.0,
    )
    identity.save(path, signed)
    assert identity.load(path) == signed and signed.enrolled
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["version"] == identity.VERSION
    again = signed.signed(
        agent_id="node-agent-node-a",
        agent_address="colony:9001",
        certificate_pem="CERT2",
        ca_pem="CA",
        not_after=20.0,
        renew_after=17.0,
        at=9.0,
    )
    assert again.enrolled_at == 1.0  # a renewal is not an enrollment
    assert identity.load(tmp_path / "nothing.json") is None


def test_a_record_for_another_colony_or_node_is_not_used() -> None:
    assert record().matches(colony_id="prod", node_name="a") is None
    assert record().matches(colony_id="staging", node_name="a") == "it belongs to colony 'prod', not 'staging'"
    assert record().matches(colony_id="prod", node_name="b") == "it belongs to node 'a', not 'b'"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"version": 2, "colony_id": "prod"}', "written by a newer agent"),
        ("{not json", "not a valid identity record"),
        ('{"colony_id": "prod"}', "no version"),
        ('{"version": 1, "colony_id": "prod"}', "incomplete identity record"),
    ],
)
def test_a_record_it_cannot_trust_is_refused_and_left_alone(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "identity.json"
    path.write_text(content)
    with pytest.raises(IdentityError, match=message):
        identity.load(path)
    assert path.read_text() == content


def test_a_symlink_in_place_of_the_record_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.json").write_text("{}")
    (tmp_path / "identity.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(IdentityError, match="a symlink is refused"):
        identity.load(tmp_path / "identity.json")
