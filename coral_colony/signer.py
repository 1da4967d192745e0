"""The colony's CA signs node agents' certificates, and reads them back from a peer.

An agent certificate names the agent in its CN and its node in a URI SAN,
``spiffe://<colony id>/node/<node name>``, which gRPC reports as the peer's
``peer_spiffe_id``. It is short-lived (``AGENT_CERT_LIFETIME``) and the agent
renews it after two thirds of that. The colony checks the certificate's
fingerprint against the node's enrollment on every call, so a revoked
agent is refused at once, whatever the certificate's remaining lifetime.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coral_base.errors import CoralError

AGENT_CERT_LIFETIME = datetime.timedelta(hours=24)
_NODE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a Kubernetes node name (DNS-1123 subdomain)
_PEM_BODY = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


class EnrollmentRefused(CoralError):
    """The request cannot be signed; the message says why (it is audited and returned to the agent)."""


@dataclass(frozen=True, slots=True)
class Signed:
    agent_id: str
    certificate_pem: bytes
    fingerprint: str  # sha256 of the DER certificate, hex
    key_sha256: str  # sha256 of the DER public key (SubjectPublicKeyInfo), hex: what the node is bound to
    not_after: float
    renew_after: float


@dataclass(frozen=True, slots=True)
class PeerAgent:
    """Who is calling on the agent endpoint, as its verified certificate says."""

    agent_id: str
    node_name: str
    fingerprint: str


def agent_id_for(node_name: str) -> str:
    return f"node-agent-{node_name}"


def spiffe_id(colony_id: str, node_name: str) -> str:
    return f"spiffe://{colony_id}/node/{node_name}"


def check_node_name(node_name: str) -> None:
    if not _NODE.match(node_name):
        raise EnrollmentRefused(f"node name {node_name!r} is not a Kubernetes node name (DNS-1123 subdomain)")


def sign_agent(
    csr_pem: bytes,
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    colony_id: str,
    node_name: str,
    now: datetime.datetime,
    lifetime: datetime.timedelta = AGENT_CERT_LIFETIME,
) -> Signed:
    """A client certificate for the key of ``csr_pem``; the CSR's own names are ignored."""
    check_node_name(node_name)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise EnrollmentRefused(f"not a PEM certificate signing request ({exc})") from None
    if not csr.is_signature_valid:
        raise EnrollmentRefused("the signing request's signature does not match its key")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise EnrollmentRefused("the key must be ECDSA (P-256) or Ed25519")
    agent_id = agent_id_for(node_name)
    not_after = now + lifetime
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id(colony_id, node_name))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    return Signed(
        agent_id=agent_id,
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
        fingerprint=hashlib.sha256(der).hexdigest(),
        key_sha256=hashlib.sha256(
            key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ).hexdigest(),
        not_after=not_after.timestamp(),
        renew_after=(now + lifetime * 2 / 3).timestamp(),
    )


def peer_agent(auth_context: Mapping[str, Iterable[bytes]], *, colony_id: str) -> PeerAgent | None:
    """The agent a verified mutual-TLS peer is, or None when its certificate names no node of this colony."""
    uris = [u.decode(errors="replace") for u in auth_context.get("peer_spiffe_id", ())]
    names = [n.decode(errors="replace") for n in auth_context.get("x509_common_name", ())]
    pems = list(auth_context.get("x509_pem_cert", ()))
    prefix = f"spiffe://{colony_id}/node/"
    if len(uris) != 1 or not uris[0].startswith(prefix) or len(names) != 1 or len(pems) != 1:
        return None
    node_name = uris[0].removeprefix(prefix)
    if names[0] != agent_id_for(node_name):
        return None
    return PeerAgent(agent_id=names[0], node_name=node_name, fingerprint=pem_fingerprint(pems[0]))


def pem_fingerprint(pem: bytes) -> str:
    """sha256 of the DER certificate inside ``pem``, hex (no parsing beyond the base64)."""
    match = _PEM_BODY.search(pem)
    if match is None:
        return ""
    return hashlib.sha256(base64.b64decode(b"".join(match.group(1).split()))).hexdigest()
