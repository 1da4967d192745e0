"""The ``coral.identity.v1`` services: node agents enroll (public endpoint) and renew (agent endpoint).

Enroll takes one credential (the colony's shared secret, a bootstrap token
with the ``enroll`` scope, or the agent's projected ServiceAccount token
when the colony checks them) and a signing request for a key the agent
made and keeps; it answers with a short-lived certificate naming the agent
and its node. A node is bound to the first key that enrolls it: another
key is refused (and audited) until an operator revokes the node (`coral
agents revoke NODE`). The credential only enrolls: from then on the
certificate is the agent's identity on the agent endpoint, and Renew, on
that endpoint, trades it for a new one before it expires.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from coral_base.wire.coral.identity.v1 import identity_pb2, identity_pb2_grpc
from coral_colony import codec
from coral_colony.enrolled import Enrolled
from coral_colony.model import (
    AuditEntry,
    AuditKind,
    BoundToken,
    EnrollCall,
    Enrollment,
    EnrollMethod,
    IssuedCertificate,
    Scope,
)
from coral_colony.refusals import Refusals
from coral_colony.signer import AGENT_CERT_LIFETIME, EnrollmentRefused, Signed, agent_id_for, sign_agent
from coral_colony.stores.writer import WriterThread
from coral_colony.tokens import OperatorTokens

_Context = grpc.aio.ServicerContext[object, object]
# A projected ServiceAccount token -> its account and the node it is bound to, or why it is refused
# (coral_colony.token_review.TokenReviewer asks the Kubernetes API).
ServiceAccountCheck = Callable[[str], Awaitable[BoundToken | EnrollmentRefused]]


class EnrollmentService(identity_pb2_grpc.EnrollmentServicer, identity_pb2_grpc.RenewalServicer):
    def __init__(
        self,
        writer: WriterThread,
        enrolled: Enrolled,
        *,
        colony_id: str,
        colony_secret: str,
        tokens: OperatorTokens,
        signing_ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
        trusted_cas: bytes,
        agent_port: int,
        refusals: Refusals,
        lifetime: datetime.timedelta = AGENT_CERT_LIFETIME,
        service_accounts: ServiceAccountCheck | None = None,
        clock: Callable[[], float] = time.time,  # the registry's and the audit log's time
        wall: Callable[[], float] = time.time,  # certificates' validity: TLS checks it against the real clock
    ) -> None:
        self.writer = writer
        self.enrolled = enrolled
        self.colony_id = colony_id
        self._secret = colony_secret.encode()
        self.tokens = tokens
        self.signing_ca = signing_ca
        self.trusted_cas = trusted_cas
        self.agent_port = agent_port
        self.refusals = refusals
        self.lifetime = lifetime
        self.service_accounts = service_accounts
        self.clock = clock
        self.wall = wall

    # -- public endpoint -----------------------------------------------------------------

    async def Enroll(self, request: identity_pb2.EnrollRequest, context: _Context) -> identity_pb2.Certificate:
        call = codec.enroll_call(request)
        credential = await self._credential(call, context)
        signed = await self._sign(call.csr_pem, call.node_name, context)
        now = self.clock()
        enrollment = Enrollment(
            node_name=call.node_name,
            agent_id=signed.agent_id,
            key_sha256=signed.key_sha256,
            certificate_sha256=signed.fingerprint,
            not_after=signed.not_after,
            method=call.method or EnrollMethod.SECRET,
            credential=credential,
            enrolled_at=now,
            renewed_at=now,
        )
        holder = await self.writer.run(lambda w: w.enroll(enrollment, now=now, then=self.enrolled.put))
        if holder is not None:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"node {call.node_name} is already enrolled to another key: an operator revokes that enrollment "
                f"first (coral agents revoke {call.node_name}) if this agent replaces it",
            )
        return codec.issued_certificate(self._issued(signed))

    async def _credential(self, call: EnrollCall, context: _Context) -> str:
        """The credential's name for the audit log (never the secret), or the call aborted.

        A refusal is audited under a reason of the colony's own words (``reason``), never a field the caller
        chose: a stranger varying its colony id or node name still makes one row a minute (``refusals``).
        """
        why = reason = ""
        name = ""
        if call.colony_id != self.colony_id:
            why, reason = f"wrong colony id (sent: {call.colony_id!r})", "wrong colony id"
        elif call.method is EnrollMethod.SECRET:
            if not hmac.compare_digest(call.credential.encode(), self._secret):
                why = "wrong colony secret"
        elif call.method is EnrollMethod.BOOTSTRAP_TOKEN:
            principal = self.tokens.authenticate(call.credential)
            if principal is None or Scope.ENROLL not in principal.scopes:
                why = "unknown, expired or non-bootstrap token"
            else:
                name = principal.name
        elif call.method is EnrollMethod.SERVICE_ACCOUNT:
            if self.service_accounts is None:
                why = "this colony does not accept ServiceAccount tokens (see --enroll-service-account)"
            else:
                bound = await self.service_accounts(call.credential)
                if isinstance(bound, EnrollmentRefused):
                    why = str(bound)  # the API server's verdict: no field the caller chose
                elif bound.node_name != call.node_name:
                    reason = "ServiceAccount token bound to another node"
                    why = (
                        f"the token of {bound.service_account} is bound to node {bound.node_name!r}, "
                        f"not {call.node_name!r}"
                    )
                else:
                    name = bound.credential()
        else:
            why = "no credential"
        if why:
            entry = AuditEntry(
                time=self.clock(),
                kind=AuditKind.AUTH,
                action="agent.enrollment_refused",
                actor=agent_id_for(call.node_name),
                agent_id=agent_id_for(call.node_name),
                node_name=call.node_name,
                detail=why,
            )
            await self.refusals.refused(entry, peer=context.peer(), reason=reason or why)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"enrollment refused: {why}")
        return name

    async def _sign(self, csr_pem: bytes, node_name: str, context: _Context) -> Signed:
        key, ca = self.signing_ca
        try:  # off the event loop: a burst of enrollments must not stall every other call
            return await asyncio.to_thread(
                sign_agent,
                csr_pem,
                ca_key=key,
                ca_cert=ca,
                colony_id=self.colony_id,
                node_name=node_name,
                now=datetime.datetime.fromtimestamp(self.wall(), datetime.UTC),
                lifetime=self.lifetime,
            )
        except EnrollmentRefused as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable: abort raises") from None

    def _issued(self, signed: Signed) -> IssuedCertificate:
        return IssuedCertificate(
            agent_id=signed.agent_id,
            certificate_pem=signed.certificate_pem,
            ca_pem=self.trusted_cas,
            not_after=signed.not_after,
            renew_after=signed.renew_after,
            agent_port=self.agent_port,
        )

    # -- agent endpoint ------------------------------------------------------------------

    async def Renew(self, request: identity_pb2.RenewRequest, context: _Context) -> identity_pb2.Certificate:
        caller = await self.enrolled.caller(context)
        signed = await self._sign(codec.renewal_csr(request), caller.node_name, context)
        now = self.clock()
        current = caller.enrollment
        renewed = replace(
            current,
            key_sha256=signed.key_sha256,
            certificate_sha256=signed.fingerprint,
            previous_certificate_sha256=current.certificate_sha256,
            not_after=signed.not_after,
            renewed_at=now,
        )
        if not await self.writer.run(lambda w: w.renew(renewed, now=now, then=self.enrolled.put)):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"the enrollment of node {caller.node_name} changed")
        return codec.issued_certificate(self._issued(signed))
