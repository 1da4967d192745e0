"""A colony's identity on disk: CA, server certificate, colony id and secret.

``coral colony init DIR`` writes:

    DIR/ca.crt            the colony CA; agents pin it (colony.caFile); two CAs while one rotates
                          (``coral_colony.ca_rotation``): the new one first
    DIR/ca.key            the (first) CA's key, kept by the colony only (0600): it signs agents' certificates
    DIR/server.crt|.key   the mesh endpoint's certificate, signed by the CA
    DIR/colony.yaml       colony id (public) and the path of the secret
    DIR/colony-secret     random agent secret (0600); mount it into agents as a Secret

Nothing here is ever logged.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coral_base.errors import ConfigError
from coral_base.private_files import write_private

VALIDITY = datetime.timedelta(days=825)
BACKDATE = datetime.timedelta(minutes=5)  # certificates start this early: clocks of the hosts that check them drift


@dataclass(frozen=True, slots=True)
class ColonyIdentity:
    directory: Path
    colony_id: str
    hosts: tuple[str, ...] = ()  # the names agents dial, which the server certificate names

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def secret_file(self) -> Path:
        return self.directory / "colony-secret"

    def trusted_cas(self) -> bytes:
        """Every CA the colony trusts for agents' certificates (``ca.crt``: more than one while a CA rotates)."""
        return self.ca_cert.read_bytes()

    def ca_certificates(self) -> list[x509.Certificate]:
        """The certificates of ``ca.crt``: the signing CA first, then the one a rotation is retiring, if any."""
        return x509.load_pem_x509_certificates(self.trusted_cas())

    def signing_ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """The CA that signs agents' certificates: ``ca.key`` and the first certificate of ``ca.crt``."""
        key = load_key(self.ca_key)
        certificate = self.ca_certificates()[0]
        if certificate.public_key() != key.public_key():
            raise ConfigError(
                f"the first certificate of {self.ca_cert} is not the CA of {self.ca_key} (an interrupted "
                f"`coral colony ca rotate`? run it again)"
            )
        return key, certificate

    def secret(self) -> str:
        return self.secret_file.read_text().strip()


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: the colony signs its agents' certificates with it (keep it beside ca.crt, "
            "in the colony's identity Secret)"
        ) from None
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an ECDSA key")
    return key


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificates_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def new_ca(
    colony_id: str, *, now: datetime.datetime, label: str = ""
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA key and its self-signed certificate, ``coral colony <id> CA`` (`` <label>`` after it: a rotated CA
    must not share its subject with the one it replaces, which TLS libraries find issuers by)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"coral colony {colony_id} CA" + (f" {label}" if label else ""))]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def server_certificate(
    key: ec.EllipticCurvePrivateKey,
    *,
    hosts: Sequence[str],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: datetime.datetime,
) -> x509.Certificate:
    """The endpoints' certificate for ``key``, naming ``hosts`` (IP addresses and DNS names), signed by the CA."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def init_colony(directory: Path, *, colony_id: str, hosts: Sequence[str]) -> ColonyIdentity:
    """Create a new colony identity; refuses to overwrite an existing one."""
    if (directory / "colony.yaml").is_symlink() or (directory / "colony.yaml").exists():
        raise ConfigError(f"{directory} already holds a colony: choose another directory or remove it first")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.is_symlink() or not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory (a symlink is refused)")
    directory.chmod(0o700)  # it holds the CA key and the secret
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca = new_ca(colony_id, now=now)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = server_certificate(server_key, hosts=hosts, ca_key=ca_key, ca_cert=ca, now=now)
    identity = ColonyIdentity(directory=directory, colony_id=colony_id, hosts=tuple(hosts))
    write_private(identity.ca_cert, certificates_pem([ca]), mode=0o644)
    write_private(identity.ca_key, key_pem(ca_key))
    write_private(identity.server_cert, certificates_pem([server]), mode=0o644)
    write_private(identity.server_key, key_pem(server_key))
    write_private(identity.secret_file, (secrets.token_urlsafe(32) + "\n").encode())
    record = {"colonyId": colony_id, "secretFile": "colony-secret", "hosts": list(hosts)}
    write_private(directory / "colony.yaml", yaml.safe_dump(record).encode(), mode=0o644)
    return identity


def load_colony(directory: Path) -> ColonyIdentity:
    try:
        data = yaml.safe_load((directory / "colony.yaml").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{directory} holds no colony: run `coral colony init {directory}` first") from None
    hosts = tuple(str(host) for host in data.get("hosts") or ())
    return ColonyIdentity(directory=directory, colony_id=str(data["colonyId"]), hosts=hosts)
