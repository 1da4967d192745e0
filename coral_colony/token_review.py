"""ServiceAccount enrollment: the colony checks an agent's projected token with the Kubernetes TokenReview API.

A node agent that enrolls with ``service_account_token`` sends the token the
kubelet projected into its pod for the colony's audience. The colony (not
the agent: the agent needs no RBAC for this) posts it to
``authentication.k8s.io/v1`` TokenReview with ``spec.audiences`` = its
audience, and enrolls the agent only when the API says:

- ``status.authenticated``, for that audience (a token minted for another
  audience, expired, or of a pod that no longer exists is not);
- the user is one of the ServiceAccounts the colony enrolls
  (``--enroll-service-account NAMESPACE/NAME``);
- the token is bound to a pod on a node: ``status.user.extra
  ["authentication.kubernetes.io/node-name"]`` (Kubernetes >= 1.30, feature
  ServiceAccountTokenPodNodeInfo), which becomes the only node the agent may
  enroll as; ``EnrollmentService`` compares it with the node the agent names.

The review is a blocking HTTPS call, so it runs on a worker thread with a
timeout, and at most ``MAX_IN_FLIGHT`` run at once: unauthenticated callers
cannot make the colony hold more of the API's time than that. Nothing is
cached (a token is checked each time it is presented), and the token is
never logged or kept: the API's answer echoes it, and only its status is read.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from coral_base.errors import ConfigError
from coral_base.logs import emit
from coral_colony.kube_api import ApiCallFailed, ApiServer
from coral_colony.model import BoundToken
from coral_colony.signer import EnrollmentRefused

log = logging.getLogger("coral_colony.token_review")

DEFAULT_AUDIENCE = "coral-colony"
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
NODE_NAME = "authentication.kubernetes.io/node-name"
POD_NAME = "authentication.kubernetes.io/pod-name"
REVIEW_TIMEOUT_S = 5.0
MAX_IN_FLIGHT = 8
MAX_TOKEN_CHARS = 16 * 1024  # a projected token is about 1 KiB
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class UserInfo(TypedDict, total=False):
    username: str
    extra: dict[str, list[str]]


class TokenReviewStatus(TypedDict, total=False):
    """``status`` of an authentication.k8s.io/v1 TokenReview, as the API answers it."""

    authenticated: bool
    user: UserInfo
    audiences: list[str]
    error: str


@dataclass(frozen=True, slots=True, order=True)
class ServiceAccountName:
    """A ServiceAccount the colony enrolls agents of: ``--enroll-service-account NAMESPACE/NAME``."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ServiceAccountName:
        namespace, slash, name = text.partition("/")
        if not slash or not _DNS_LABEL.match(namespace) or not _DNS_SUBDOMAIN.match(name):
            raise ConfigError(
                f"--enroll-service-account {text!r}: give NAMESPACE/NAME of the agents' ServiceAccount, "
                "e.g. coral-system/coral-node-agent"
            )
        return cls(namespace, name)

    @property
    def username(self) -> str:
        """How the API names the account's tokens' user."""
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def verdict(
    status: TokenReviewStatus, *, audience: str, allowed: frozenset[ServiceAccountName]
) -> BoundToken | EnrollmentRefused:
    """What a TokenReview's status means for enrollment: the account and node, or why the token is refused."""
    if not status.get("authenticated"):
        error = str(status.get("error", ""))[:300]
        return EnrollmentRefused(
            "the Kubernetes API did not authenticate the ServiceAccount token"
            + (f": {error}" if error else "")
            + f" (expired, its pod deleted, or not projected for audience {audience!r})"
        )
    if audience not in (status.get("audiences") or []):
        return EnrollmentRefused(f"the ServiceAccount token is not meant for audience {audience!r}")
    user = status.get("user") or UserInfo()
    username = str(user.get("username", ""))
    if username not in {account.username for account in allowed}:
        enrolled = ", ".join(f"{a.namespace}/{a.name}" for a in sorted(allowed))
        return EnrollmentRefused(
            f"{username or 'the token'} is not a ServiceAccount this colony enrolls agents of "
            f"(--enroll-service-account: {enrolled})"
        )
    extra = user.get("extra") or {}
    nodes = extra.get(NODE_NAME) or []
    if len(nodes) != 1 or not nodes[0]:
        return EnrollmentRefused(
            f"the token of {username} names no node: enroll with a projected ServiceAccount token bound to the "
            "agent's pod (a serviceAccountToken volume source); the API adds the node on Kubernetes >= 1.30 "
            "(feature ServiceAccountTokenPodNodeInfo)"
        )
    pods = extra.get(POD_NAME) or [""]
    return BoundToken(service_account=username, node_name=nodes[0], pod_name=pods[0])


class TokenReviewer:
    """The colony's ``ServiceAccountCheck``: a token -> its account and node (``BoundToken``), or a refusal."""

    def __init__(
        self,
        api: ApiServer,
        *,
        allowed: Iterable[ServiceAccountName],
        audience: str = DEFAULT_AUDIENCE,
        timeout: float = REVIEW_TIMEOUT_S,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.api = api
        self.allowed = frozenset(allowed)
        if not self.allowed:
            raise ConfigError("ServiceAccount enrollment needs at least one --enroll-service-account NAMESPACE/NAME")
        if not audience:
            raise ConfigError("--token-audience must not be empty")
        self.audience = audience
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self._in_flight = 0

    def announce(self) -> None:
        """Log, at start, whose tokens the colony takes, for which audience, checked where."""
        emit(
            log,
            "colony.service_account_enrollment",
            service_accounts=",".join(f"{a.namespace}/{a.name}" for a in sorted(self.allowed)),
            audience=self.audience,
            token_review=f"{self.api.server} ({self.api.source})",
        )

    async def __call__(self, token: str) -> BoundToken | EnrollmentRefused:
        if len(token) > MAX_TOKEN_CHARS or not _JWT.match(token):
            return EnrollmentRefused("the ServiceAccount token is not a JWT: send the projected token file's content")
        if self._in_flight >= self.max_in_flight:
            return EnrollmentRefused(
                f"{self.max_in_flight} ServiceAccount tokens are being checked already: try again shortly"
            )
        # The slot is freed when the worker thread is done, not when the caller stops waiting for it.
        self._in_flight += 1
        review = asyncio.ensure_future(asyncio.to_thread(self._review, token))
        review.add_done_callback(self._done)
        try:
            answer = await asyncio.wait_for(asyncio.shield(review), self.timeout + 1.0)
        except (ApiCallFailed, TimeoutError) as exc:
            reason = str(exc) or f"TokenReview did not answer within {self.timeout:g}s"
            emit(log, "enrollment.token_review_failed", level=logging.WARNING, reason=reason)
            return EnrollmentRefused(f"the colony could not check the ServiceAccount token: {reason}")
        return verdict(answer, audience=self.audience, allowed=self.allowed)

    def _done(self, review: asyncio.Future[TokenReviewStatus]) -> None:
        self._in_flight -= 1
        if not review.cancelled():
            review.exception()  # retrieved: a review nobody waits for any more fails quietly

    def _review(self, token: str) -> TokenReviewStatus:
        """Blocking: one TokenReview; only its status is kept (its spec echoes the token)."""
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        answer = self.api.post(TOKEN_REVIEWS, review, timeout=self.timeout)
        return _status(answer.get("status"))


def _status(raw: object) -> TokenReviewStatus:
    """The fields of a TokenReview status that enrollment reads, each checked for its type."""
    status = TokenReviewStatus()
    if not isinstance(raw, Mapping):
        return status
    if raw.get("authenticated") is True:
        status["authenticated"] = True
    if isinstance(error := raw.get("error"), str):
        status["error"] = error
    status["audiences"] = _strings(raw.get("audiences"))
    user = raw.get("user")
    if isinstance(user, Mapping):
        info = UserInfo(username=str(user.get("username", "")))
        extra = user.get("extra")
        if isinstance(extra, Mapping):
            info["extra"] = {str(key): _strings(values) for key, values in extra.items()}
        status["user"] = info
    return status


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
