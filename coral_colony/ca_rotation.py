"""Rotating the colony CA with an overlap window: ``coral colony ca rotate``, then ``coral colony ca finish``.

1. ``rotate`` makes a new CA. ``ca.crt`` becomes [new, previous] and
   ``ca.key`` the new CA's key: once restarted, the colony signs agents'
   certificates with the new CA, trusts both for the agents' certificates,
   and sends both to every agent that enrolls or renews. ``server.crt`` stays
   signed by the previous CA, so agents (and operators) that pin only it still
   verify the colony.
2. Within one certificate lifetime of that restart every running agent
   renews: its certificate is the new CA's and its identity record holds both
   CAs.
3. ``finish`` signs ``server.crt`` with the new CA (same key, same names, those
   colony.yaml records) and drops the previous CA from ``ca.crt``. Once the
   colony restarted, a certificate of the previous CA is refused.

The previous CA's key is not kept: nothing signs with it after the restart
(the server certificate it signed stays valid until ``finish`` replaces it),
and a retired key that no one needs is only something more to leak. Each
step writes the certificate bundle before the key it goes with, so an
interrupted ``rotate`` leaves the previous key in place and can be run again.
The CA directory is read at start: each step takes effect when the colony
restarts (docs/security.md has the procedure for a chart install).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from coral_base.errors import ConfigError
from coral_base.private_files import write_private
from coral_base.tables import age
from coral_colony.identity import (
    BACKDATE,
    ColonyIdentity,
    certificates_pem,
    key_pem,
    load_key,
    new_ca,
    server_certificate,
)

MIN_OVERLAP = datetime.timedelta(hours=24)  # the agents' default certificate lifetime (--agent-cert-lifetime)


@dataclass(frozen=True, slots=True)
class CaChange:
    """What a step did to ``ca.crt``: the CA that signs, and the one rotated out (still trusted after
    ``rotate``, dropped by ``finish``)."""

    signing: x509.Certificate
    previous: x509.Certificate


def describe(certificate: x509.Certificate) -> str:
    """A CA as an operator recognises it: its name and the start of its SHA-256 fingerprint."""
    name = certificate.subject.rfc4514_string()
    return f"{name} (sha256 {certificate.fingerprint(hashes.SHA256()).hex()[:16]}…)"


def started(certificate: x509.Certificate) -> datetime.datetime:
    """When the rotation that made ``certificate`` ran (certificates are backdated by ``BACKDATE``)."""
    return certificate.not_valid_before_utc + BACKDATE


def rotate_ca(identity: ColonyIdentity, *, now: datetime.datetime) -> CaChange:
    """A new signing CA first in ``ca.crt``, the current one after it; ``server.crt`` untouched."""
    key = load_key(identity.ca_key)
    certificates = identity.ca_certificates()
    current = [c for c in certificates if c.public_key() == key.public_key()]
    if not current:
        raise ConfigError(f"no certificate of {identity.ca_cert} is the CA of {identity.ca_key}: restore them first")
    if len(certificates) > 1 and certificates[0] == current[0]:
        raise ConfigError(
            f"a CA rotation is already in progress in {identity.directory} (started "
            f"{started(certificates[0]):%Y-%m-%d %H:%M} UTC): finish it first "
            f"(coral colony ca finish --dir {identity.directory})"
        )
    # Not the first certificate yet matching the key: an earlier rotate stopped between its two writes.
    previous = current[0]
    new_key, new = new_ca(identity.colony_id, now=now, label=f"{now:%Y-%m-%dT%H:%M:%SZ}")
    write_private(identity.ca_cert, certificates_pem([new, previous]), mode=0o644)
    write_private(identity.ca_key, key_pem(new_key))
    return CaChange(signing=new, previous=previous)


def finish_ca_rotation(
    identity: ColonyIdentity, *, now: datetime.datetime, min_overlap: datetime.timedelta = MIN_OVERLAP
) -> CaChange:
    """``server.crt`` signed by the new CA and ``ca.crt`` holding it alone; refused when no rotation is in
    progress or it started less than ``min_overlap`` ago (agents may not have renewed yet)."""
    certificates = identity.ca_certificates()
    if len(certificates) < 2:
        raise ConfigError(
            f"no CA rotation is in progress in {identity.directory} ({identity.ca_cert} holds one CA): "
            f"start one with `coral colony ca rotate --dir {identity.directory}`"
        )
    ca_key, signing = identity.signing_ca()
    if now - started(signing) < min_overlap:
        at = now.timestamp()
        raise ConfigError(
            f"the CA rotation started {age(started(signing).timestamp(), now=at)} ago, less than --min-overlap "
            f"({age(at - min_overlap.total_seconds(), now=at)}): agents that have not renewed since the colony "
            "restarted with the new CA would be refused; wait one agent certificate lifetime "
            "(--agent-cert-lifetime) after that restart, or set --min-overlap to it"
        )
    if not identity.hosts:
        raise ConfigError(f"{identity.directory / 'colony.yaml'} records no hosts: the server certificate needs them")
    server_key = load_key(identity.server_key)
    server = server_certificate(server_key, hosts=identity.hosts, ca_key=ca_key, ca_cert=signing, now=now)
    write_private(identity.server_cert, certificates_pem([server]), mode=0o644)
    write_private(identity.ca_cert, certificates_pem([signing]), mode=0o644)
    return CaChange(signing=signing, previous=certificates[1])
