"""The agent's side of enrollment: one identity, made once, renewed before it expires.

On its first start the agent makes a key (``cri_agent.keygen``, in a child
process), keeps it in its identity record (``cri_agent.identity``) and asks
the colony's public endpoint to Enroll it with the one credential it has:
the shared colony secret, a bootstrap token, or its projected
ServiceAccount token. The colony answers with a short-lived certificate
naming the agent and its node, and the port of its agent endpoint. From
then on every mesh and control call goes to that endpoint over mutual TLS;
past two thirds of the certificate's life the agent Renews it there with a
new key. A restarted agent reads its record and reconnects: no enrollment,
no audit entry. The credential is only ever sent to Enroll, never logged.

What the colony answers decides what the agent does next:

- a refused credential, or a node enrolled to another key: the agent keeps
  retrying (with backoff) and says why in its ``colony`` condition; once an
  operator revokes the other key, the next attempt enrolls;
- a revoked enrollment: the agent stops speaking for the node and says so
  (an operator removed it on purpose); it enrolls again only when its record
  is removed;
- a colony that no longer knows the node (it lost its registry): the agent
  enrolls again at once;
- a certificate that expired while the agent was away (longer than its
  lifetime: then also across any whole CA rotation, whose CA the colony may
  have dropped): the agent enrolls again with the same key, which the colony
  signs again for the node it is bound to;
- a colony without the Enrollment service (an older release): the agent
  registers with the shared secret, as agents did before.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import grpc
import grpc.aio

from coral_base.clock import Clock
from coral_base.grpc_options import channel_options
from coral_base.logs import emit
from coral_base.vocabulary import EnrollMethod
from coral_base.wire.coral.identity.v1 import identity_pb2, identity_pb2_grpc
from cri_agent import colony_codec, identity
from cri_agent.identity import Identity, IdentityError

log = logging.getLogger("cri_agent.enrollment")


class Revoked(IdentityError):
    """The colony revoked this node's enrollment: the agent does not speak for the node any more."""


@dataclass(frozen=True, slots=True)
class Credential:
    """What the agent enrolls with: one of the colony secret, a bootstrap token, a ServiceAccount token."""

    method: EnrollMethod
    value: str = field(repr=False)
    token_file: Path | None = None  # a projected token is re-read at each enrollment: the kubelet rotates it

    def current(self) -> str:
        if self.token_file is None:
            return self.value
        try:
            return self.token_file.read_text().strip()
        except OSError as exc:
            raise IdentityError(f"the ServiceAccount token {self.token_file} cannot be read: {exc.strerror}") from None


# Every channel the agent opens to its colony: the message limits, and a subchannel of its own (a new channel
# dials anew instead of reusing gRPC's shared connection, which may still be backing off from a colony restart).
COLONY_CHANNEL_OPTIONS: Final = channel_options(("grpc.use_local_subchannel_pool", 1))


def public_channel(address: str, ca_pem: bytes) -> grpc.aio.Channel:
    """The colony's public endpoint: TLS pinned to its CA."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(address, credentials, options=COLONY_CHANNEL_OPTIONS)


class AgentIdentity:
    """The agent's identity record and what it takes to keep it: enroll, renew, dial the agent endpoint."""

    def __init__(
        self,
        path: Path,
        *,
        address: str,
        ca_pem: bytes,
        colony_id: str,
        node_name: str,
        version: str,
        credential: Credential,
        clock: Clock,
        agent_address: str = "",  # override the colony's answer (a NodePort, a proxy)
        timeout_s: float = 5.0,
    ) -> None:
        self.path = path
        self.address = address
        self.ca_pem = ca_pem
        self.colony_id = colony_id
        self.node_name = node_name
        self.version = version
        self.credential = credential
        self.clock = clock
        self.agent_address_override = agent_address
        self.timeout_s = timeout_s
        self.current: Identity | None = None
        self.revoked = ""
        self._csr = ""  # the signing request of a key made and kept, not yet signed
        self._unsaved = False  # the record in memory could not be written

    @property
    def agent_id(self) -> str:
        return self.current.agent_id if self.current else ""

    async def ensure(self) -> Identity:
        """An enrolled identity: the one on disk, or a new enrollment (raises when the colony refuses)."""
        if self.revoked:
            raise Revoked(self.revoked)
        if self.current is None:
            self.current = await asyncio.to_thread(self._load)
        if self.current is not None and self._unsaved:
            await self._save(self.current)
        if self.current is not None and self.current.enrolled:
            if not self.expired():
                return self.current
            emit(
                log,
                "identity.expired",
                level=logging.WARNING,
                not_after=round(self.current.not_after),
                reason="the certificate expired (the agent was away longer than its lifetime): enrolling again",
            )
        return await self._enroll()

    def expired(self) -> bool:
        """True once the certificate is past its end: the colony would refuse it (expired, or of a CA it dropped
        since: a CA rotation outlasts a certificate's lifetime). The same key enrolls again."""
        current = self.current
        return current is not None and 0 < current.not_after <= self.clock.time()

    def _load(self) -> Identity | None:
        found = identity.load(self.path)
        if found is None:
            return None
        if why := found.matches(colony_id=self.colony_id, node_name=self.node_name):
            emit(log, "identity.not_used", level=logging.WARNING, path=str(self.path), reason=why)
            return None
        return found

    async def _enroll(self) -> Identity:
        """Enroll with the credential; the key is kept before it is sent (a crash re-sends the same key)."""
        record = self.current
        if record is None or not record.key_pem:
            key_pem, self._csr = await identity.new_key(self.node_name)
            record = Identity(colony_id=self.colony_id, agent_id="", node_name=self.node_name, key_pem=key_pem)
            await self._save(record)
            self.current = record
        elif not self._csr:  # a key kept by an enrollment that did not finish: ask for the same key
            _, self._csr = await identity.new_key(self.node_name, key_pem=record.key_pem)
        csr_pem = self._csr
        request = colony_codec.enroll_request(
            colony_id=self.colony_id,
            node_name=self.node_name,
            csr_pem=csr_pem,
            method=self.credential.method,
            credential=self.credential.current(),
            version=self.version,
        )
        async with public_channel(self.address, self.roots()) as channel:
            answer = await identity_pb2_grpc.EnrollmentStub(channel).Enroll(request, timeout=self.timeout_s)
        signed = await self._keep(record, answer)
        emit(log, "identity.enrolled", agent_id=signed.agent_id, node=self.node_name, method=self.credential.method)
        return signed

    async def _save(self, record: Identity) -> None:
        """Keep ``record``; a disk that refuses it (full, read-only) is said once and tried again at each
        ``ensure``: the agent goes on with its identity in memory (a restart before it is kept enrolls
        again, which the colony refuses for another key until an operator revokes the node)."""
        try:
            await asyncio.to_thread(identity.save, self.path, record)
        except OSError as exc:
            if not self._unsaved:
                emit(log, "identity.not_kept", level=logging.ERROR, path=str(self.path), reason=exc.strerror)
            self._unsaved = True
        else:
            if self._unsaved:
                emit(log, "identity.kept", path=str(self.path))
            self._unsaved = False

    def due(self) -> bool:
        """True once the certificate is past two thirds of its life."""
        return self.current is not None and self.current.enrolled and self.clock.time() >= self.current.renew_after

    async def renew(self, channel: grpc.aio.Channel) -> Identity:
        """A new key and certificate, asked for on the agent endpoint with the current certificate."""
        assert self.current is not None
        key_pem, csr_pem = await identity.new_key(self.node_name)
        stub = identity_pb2_grpc.RenewalStub(channel)
        answer = await stub.Renew(colony_codec.renew_request(csr_pem), timeout=self.timeout_s)
        renewed = await self._keep(replace(self.current, key_pem=key_pem), answer)
        emit(log, "identity.renewed", agent_id=renewed.agent_id, not_after=round(renewed.not_after))
        return renewed

    async def _keep(self, record: Identity, answer: identity_pb2.Certificate) -> Identity:
        agent_id, certificate_pem, ca_pem, not_after, renew_after, agent_port = colony_codec.certificate(answer)
        host = self.address.rpartition(":")[0]
        signed = record.signed(
            agent_id=agent_id,
            certificate_pem=certificate_pem,
            ca_pem=ca_pem,
            not_after=not_after,
            renew_after=renew_after,
            agent_address=self.agent_address_override or f"{host}:{agent_port}",
            at=self.clock.time(),
        )
        await self._save(signed)
        self.current = signed
        self._csr = ""
        return signed

    @property
    def dialing(self) -> str:
        """Where the next call goes: the agent endpoint with a certificate in force, the public one to enroll."""
        if self.current is not None and self.current.enrolled and not self.expired():
            return self.current.agent_address
        return self.address

    def certificate_refused(self, details: str) -> str | None:
        """Why the agent endpoint closed every connection before a call, when ``details`` say so and the
        agent dialed it with a certificate in force: the colony does not take that certificate."""
        if self.dialing == self.address or "failed to connect" not in details or "Socket closed" not in details:
            return None
        assert self.current is not None
        until = datetime.datetime.fromtimestamp(self.current.not_after, datetime.UTC)
        return (
            f"the colony's agent endpoint at {self.current.agent_address} closed the connection in the TLS "
            "handshake: most likely it does not take this agent's certificate (valid until "
            f"{until:%Y-%m-%dT%H:%M:%SZ}), as when the colony finished a CA rotation while the agent was away; "
            "the agent enrolls again with its "
            f"credential once the certificate expires, or at once after `coral agents revoke {self.node_name}` "
            f"and removing {self.path} ({details})"
        )

    def roots(self) -> bytes:
        """The CAs the colony is verified with, on both endpoints: the pinned ``colony.caFile`` and those the
        colony sent with the agent's last certificate. During a CA rotation the colony sends the new CA
        too, so an agent whose caFile still holds only the previous one (its Secret not updated yet) keeps
        verifying the colony once its server certificate moved to the new CA."""
        sent = self.current.ca_pem.encode() if self.current is not None else b""
        return self.ca_pem + b"\n" + sent if sent else self.ca_pem

    def channel(self) -> grpc.aio.Channel:
        """The agent endpoint, over mutual TLS with the current certificate (IdentityError: none yet)."""
        if self.current is None or not self.current.enrolled:
            raise IdentityError(self.revoked or f"node {self.node_name} is not enrolled yet")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.roots(),
            private_key=self.current.key_pem.encode(),
            certificate_chain=self.current.certificate_pem.encode(),
        )
        return grpc.aio.secure_channel(self.current.agent_address, credentials, options=COLONY_CHANNEL_OPTIONS)

    def refused(self, exc: grpc.aio.AioRpcError) -> None:
        """Act on the agent endpoint's refusal of the certificate: revoked, or unknown (enroll again)."""
        details = exc.details() or ""
        if "revoked" in details:
            self.revoked = (
                f"{details}: the agent no longer speaks for node {self.node_name}; remove {self.path} "
                "(and restart the agent) to enroll again"
            )
            emit(log, "identity.revoked", level=logging.ERROR, reason=details)
        elif "not enrolled" in details and self.current is not None:
            emit(log, "identity.unknown_to_colony", level=logging.WARNING, reason=details)
            self.current = replace(self.current, certificate_pem="")  # enroll again with the same key


def describe(exc: grpc.aio.AioRpcError) -> str:
    """A refusal of the agent's credential or certificate, as the agent's ``colony`` condition says it."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{code.name}: {details}: check the agent's colony Secret (or its bootstrap or ServiceAccount token)"
    return f"{code.name}: {details}"
