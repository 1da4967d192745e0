"""The operator's client of the colony API, with errors that say what to do.

Connection settings come from flags, else the environment:
``CORAL_COLONY`` (host:port), ``CORAL_COLONY_CA`` (the colony's ca.crt)
and ``CORAL_TOKEN`` (or ``CORAL_TOKEN_FILE``), else the current context of
the CLI's config file (``coral_colony.cli.contexts``). The token is sent as
gRPC metadata over TLS and never printed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from coral_base.errors import CoralError
from coral_base.grpc_options import channel_options
from coral_base.wire.coral.colony.v1 import colony_pb2, colony_pb2_grpc
from coral_colony import codec
from coral_colony.model import AuditQuery, OperationOutput, OperationRequest, Principal, ServiceFilter
from coral_colony.tls_errors import tls_failure

DEFAULT_ADDRESS = "127.0.0.1:9000"
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class ColonyCallError(CoralError):
    """The colony refused or could not be reached; the message says what to do."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class EndpointDefaults:
    """What a CLI context says (the layer below the environment): any of it may be unset."""

    address: str = ""
    ca_file: Path | None = None
    token_file: Path | None = None
    tls_server_name: str = ""


@dataclass(frozen=True, slots=True)
class OperatorEndpoint:
    address: str
    ca_file: Path | None
    token: str
    tls_server_name: str = ""  # the name to check the colony's certificate against, when not the address's host

    def __repr__(self) -> str:
        return (
            f"OperatorEndpoint(address={self.address!r}, ca_file={self.ca_file!r}, "
            f"tls_server_name={self.tls_server_name!r})"
        )

    @classmethod
    def resolve(
        cls,
        *,
        address: str | None,
        ca_file: Path | None,
        token: str | None,
        token_file: Path | None,
        tls_server_name: str | None = None,
        context: EndpointDefaults = EndpointDefaults(),
    ) -> OperatorEndpoint:
        """Each setting from its flag, else its environment variable, else the context, else the default."""
        env = os.environ
        ca = ca_file or (Path(env["CORAL_COLONY_CA"]) if env.get("CORAL_COLONY_CA") else context.ca_file)
        if ca is None:
            raise ColonyCallError(
                "which CA signs the colony's certificate? pass --ca DIR/ca.crt, set CORAL_COLONY_CA "
                "(the ca.crt `coral colony init` wrote) or `coral config set-context NAME --ca FILE`",
                transient=False,
            )
        secret = token or env.get("CORAL_TOKEN", "")
        path = token_file or (Path(env["CORAL_TOKEN_FILE"]) if env.get("CORAL_TOKEN_FILE") else None)
        if not secret and path is None:
            path = context.token_file
        if not secret and path is not None:
            try:
                secret = path.read_text().strip()
            except OSError as exc:
                raise ColonyCallError(f"cannot read the token file {path}: {exc.strerror}", transient=False) from None
            if not secret or any(c.isspace() or not c.isprintable() for c in secret):
                raise ColonyCallError(
                    f"the token file {path} holds more than one token (or none): write only the token, as "
                    "`coral colony token create NAME --quiet` prints it",
                    transient=False,
                )
        return cls(
            address=address or env.get("CORAL_COLONY") or context.address or DEFAULT_ADDRESS,
            ca_file=ca,
            token=secret,
            tls_server_name=tls_server_name or context.tls_server_name,
        )


DEFAULT_TIMEOUT_S = 10.0


class ColonyClient:
    def __init__(self, endpoint: OperatorEndpoint, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """``timeout`` bounds each call (0: no bound; an operation's call always has one)."""
        self.endpoint = endpoint
        self.timeout = timeout
        assert endpoint.ca_file is not None
        try:
            ca = endpoint.ca_file.read_bytes()
        except OSError as exc:
            raise ColonyCallError(
                f"cannot read the colony CA {endpoint.ca_file}: {exc.strerror}", transient=False
            ) from None
        options = channel_options(
            *([("grpc.ssl_target_name_override", endpoint.tls_server_name)] if endpoint.tls_server_name else [])
        )
        self._channel = grpc.secure_channel(
            endpoint.address, grpc.ssl_channel_credentials(root_certificates=ca), options=options
        )
        self._stub = colony_pb2_grpc.ColonyStub(self._channel)
        self._metadata = (("authorization", f"Bearer {endpoint.token}"),) if endpoint.token else ()

    def __enter__(self) -> ColonyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def _call(self, method: grpc.UnaryUnaryMultiCallable[_Request, _Response], request: _Request) -> _Response:
        try:
            return method(request, timeout=self.timeout or None, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._explain(exc) from None

    def _explain(self, exc: grpc.RpcError) -> ColonyCallError:
        code: grpc.StatusCode = exc.code()
        details: str = exc.details() or ""
        address = self.endpoint.address
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return ColonyCallError(f"the colony at {address} refused: {details}", transient=False)
        if code == grpc.StatusCode.UNAVAILABLE:
            tls = tls_failure(
                details, address=address, ca_file=self.endpoint.ca_file, tls_server_name=self.endpoint.tls_server_name
            )
            if tls is not None:
                return ColonyCallError(tls, transient=False)
            return ColonyCallError(
                f"the colony at {address} is unreachable: is `coral colony start` running there? ({details})",
                transient=True,
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ColonyCallError(f"the colony at {address} did not answer within {self.timeout:g}s", transient=True)
        return ColonyCallError(f"the colony at {address} failed: {code.name}: {details}", transient=False)

    def whoami(self) -> Principal:
        """Who the colony knows the token as: its name, scopes and namespaces."""
        return codec.principal_of(self._call(self._stub.WhoAmI, codec.whoami_request()))

    def agents(self, *, node: str = "") -> colony_pb2.ListAgentsResponse:
        """The answer as it came: ``codec.agents_of`` reads it, ``codec.as_json`` prints it."""
        return self._call(self._stub.ListAgents, codec.agents_request(node=node))

    def revoke_agent(self, node: str) -> tuple[str, int]:
        """Revoke the node's enrollment: (its agent's id, the services removed)."""
        answer = self._call(self._stub.RevokeAgent, codec.revoke_request(node))
        return codec.revoked(answer)

    def services(self, where: ServiceFilter) -> colony_pb2.ListServicesResponse:
        """Every page, as one answer: ``codec.groups_of`` reads it, ``codec.as_json`` prints it."""
        stub = self._stub
        return codec.merged_services(
            _pages(lambda token: self._call(stub.ListServices, codec.services_request(where, page_token=token)))
        )

    def audit(self, query: AuditQuery) -> colony_pb2.QueryAuditResponse:
        """Every page, as one answer: ``codec.audit_of`` reads it, ``codec.as_json`` prints it."""
        stub = self._stub
        return codec.merged_audit(
            _pages(lambda token: self._call(stub.QueryAudit, codec.audit_request(query, page_token=token)))
        )

    def run_operation(self, request: OperationRequest) -> Generator[tuple[int, OperationOutput], None, None]:
        """Stream an operation's output, each message with the part (pod) it is about; closing the iterator
        (Ctrl-C) cancels it on the node(s).

        The call has a deadline too: the operation's duration (the node's hard
        cap when it names none), the colony's grace for the result, and a
        margin, so a colony that never answers cannot hold the command forever.
        """
        deadline = request.result_deadline_s + (self.timeout or DEFAULT_TIMEOUT_S)
        call = self._stub.RunOperation(codec.run_operation_request(request), metadata=self._metadata, timeout=deadline)
        try:
            for message in call:
                output = codec.operation_output(message)
                if output is not None:
                    yield output
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise self._explain(exc) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]


class _Page(Protocol):
    @property
    def next_page_token(self) -> str: ...


_P = TypeVar("_P", bound=_Page)


def _pages(ask: Callable[[str], _P]) -> Iterator[_P]:
    """Each page of a listing, following ``next_page_token`` until the colony sends none (an older colony
    sends one page, without a token)."""
    token = ""
    while True:
        answer = ask(token)
        yield answer
        if not answer.next_page_token:
            return
        token = answer.next_page_token
