"""The colony's connection to the Kubernetes API: in-cluster, or a kubeconfig; plain HTTPS, one POST.

The colony asks the API one thing (a TokenReview, ``coral_colony.token_review``),
so it speaks HTTPS with the standard library instead of loading the Kubernetes
client (~35 MiB, kept to the agent's provider by an import-linter contract).
That also keeps the reviewed token out of any client's debug log: the
TokenReview answer echoes it.

- **In-cluster** (the default): ``KUBERNETES_SERVICE_HOST``/``_PORT``, the
  pod's CA, and its ServiceAccount token, re-read at every call because the
  kubelet rotates it.
- **A kubeconfig** (``--kubeconfig``): its current context's server and CA
  (file or data), and a bearer token (``token`` or ``tokenFile``, read at
  every call) or a client certificate (file or data). Exec and auth-provider
  plugins are refused with a message: the colony runs no helper programs.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from coral_base.errors import ConfigError, CoralError

IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_ANSWER_BYTES = 1 << 20  # a TokenReview answer is a few KiB


class ApiCallFailed(CoralError):
    """The API did not answer, or refused the colony's own credentials; the message says what to check."""

    transient = True


@dataclass(frozen=True, slots=True)
class ApiServer:
    """Where the API is, how to trust it, and the colony's own credential for it."""

    server: str  # https://host:port
    tls: ssl.SSLContext
    bearer: Callable[[], str] | None = None  # read at each call; None: the client certificate in ``tls``
    source: str = ""  # where this came from, for messages: "in-cluster" or the kubeconfig's path

    @classmethod
    def in_cluster(cls, directory: Path = IN_CLUSTER_DIR, env: Mapping[str, str] = os.environ) -> ApiServer:
        host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port:
            raise ConfigError(
                "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT are unset): pass --kubeconfig PATH "
                "for the API that checks ServiceAccount tokens"
            )
        token, ca = directory / "token", directory / "ca.crt"
        if not token.exists() or not ca.exists():
            raise ConfigError(
                f"{directory} holds no ServiceAccount token and CA: the colony's pod needs "
                "automountServiceAccountToken: true (the chart sets it with colony.enrollment.method=serviceAccount)"
            )
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", _trusting(cafile=ca), bearer=_file_reader(token), source="in-cluster")

    @classmethod
    def from_kubeconfig(cls, path: Path) -> ApiServer:
        try:
            config = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"kubeconfig {path} cannot be read: {exc}") from None
        cluster, user = _current(config, path)
        base = path.parent
        server = str(cluster.get("server", ""))
        if not server.startswith("https://"):
            raise ConfigError(f"kubeconfig {path}: the cluster's server must be an https:// URL, not {server!r}")
        if cluster.get("insecure-skip-tls-verify"):
            raise ConfigError(f"kubeconfig {path}: insecure-skip-tls-verify is refused: give the cluster's CA")
        if "exec" in user or "auth-provider" in user:
            raise ConfigError(
                f"kubeconfig {path}: exec and auth-provider credentials are not supported: use a token, "
                "a tokenFile or a client certificate"
            )
        tls = _trusting(
            cafile=_path(cluster.get("certificate-authority"), base),
            cadata=_decoded(cluster.get("certificate-authority-data")),
        )
        if cluster.get("tls-server-name"):
            raise ConfigError(
                f"kubeconfig {path}: tls-server-name is not supported: use a server URL its certificate names"
            )
        bearer: Callable[[], str] | None = None
        if token := user.get("token"):
            bearer = _constant(str(token))
        elif token_file := _path(user.get("tokenFile"), base):
            bearer = _file_reader(token_file)
        elif user.get("client-certificate") or user.get("client-certificate-data"):
            _load_client_certificate(tls, user, base)
        else:
            raise ConfigError(f"kubeconfig {path}: its user has no token, tokenFile or client certificate")
        return cls(server.rstrip("/"), tls, bearer=bearer, source=str(path))

    def post(self, path: str, body: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        """POST ``body`` as JSON and return the JSON answer (blocking: run it off the event loop)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.bearer is not None:
            headers["Authorization"] = f"Bearer {self.bearer()}"
        request = urllib.request.Request(
            self.server + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self.tls))
        try:
            with opener.open(request, timeout=timeout) as answer:
                raw = answer.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise ApiCallFailed(_http_refusal(exc, self.server, path)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise ApiCallFailed(
                f"the Kubernetes API at {self.server} ({self.source}) did not answer: {reason}"
            ) from None
        if len(raw) > MAX_ANSWER_BYTES:
            raise ApiCallFailed(f"the Kubernetes API at {self.server} answered more than {MAX_ANSWER_BYTES} bytes")
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise ApiCallFailed(f"the Kubernetes API at {self.server} answered something that is not JSON") from None
        if not isinstance(decoded, dict):
            raise ApiCallFailed(f"the Kubernetes API at {self.server} answered JSON that is not an object")
        return decoded


def _http_refusal(exc: urllib.error.HTTPError, server: str, path: str) -> str:
    try:
        status = json.loads(exc.read(64 * 1024))
        message = str(status.get("message", "")) if isinstance(status, dict) else ""
    except (OSError, ValueError):
        message = ""
    what = f"the Kubernetes API at {server} refused POST {path}: HTTP {exc.code}" + (f": {message}" if message else "")
    if exc.code == 401:
        return f"{what} (the colony's own credential is not valid there)"
    if exc.code == 403:
        return f"{what} (grant the colony's identity `create` on {path.rsplit('/', 1)[-1]}: docs/security.md)"
    return what


def _current(config: object, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The current context's cluster and user sections."""
    if not isinstance(config, dict):
        raise ConfigError(f"kubeconfig {path} is not a kubeconfig (a YAML mapping)")

    def named(section: str, name: object) -> dict[str, Any]:
        for item in config.get(section) or []:
            if isinstance(item, dict) and item.get("name") == name:
                found = item.get(section[:-1])
                if isinstance(found, dict):
                    return found
        raise ConfigError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

    context = named("contexts", config.get("current-context"))
    return named("clusters", context.get("cluster")), named("users", context.get("user"))


def _path(value: object, base: Path) -> Path | None:
    """A kubeconfig's file reference: relative paths are relative to the kubeconfig's directory."""
    return base / str(value) if value else None


def _decoded(value: object) -> str | None:
    """A kubeconfig's ``*-data`` field: base64 of PEM."""
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True).decode()
    except ValueError:
        raise ConfigError("kubeconfig: a *-data field is not base64 of a PEM file") from None


def _trusting(*, cafile: Path | None = None, cadata: str | None = None) -> ssl.SSLContext:
    """Verify the API's certificate against its CA, and only against it."""
    try:
        if cafile is None and cadata is None:
            return ssl.create_default_context()
        return ssl.create_default_context(cafile=cafile, cadata=cadata)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"the Kubernetes API's CA {cafile or '(certificate-authority-data)'} is unusable: {exc}"
        ) from None


def _load_client_certificate(tls: ssl.SSLContext, user: Mapping[str, Any], base: Path) -> None:
    """A client certificate from files or data; data goes through a private file that is removed at once."""
    cert, key = _path(user.get("client-certificate"), base), _path(user.get("client-key"), base)
    cert_data, key_data = _decoded(user.get("client-certificate-data")), _decoded(user.get("client-key-data"))
    with tempfile.TemporaryDirectory(prefix="coral-kubeconfig-") as private:  # 0700
        if cert_data is not None:
            cert = _private_file(Path(private) / "client.crt", cert_data)
        if key_data is not None:
            key = _private_file(Path(private) / "client.key", key_data)
        if cert is None or key is None:
            raise ConfigError("kubeconfig: a client certificate needs its key (client-key or client-key-data)")
        try:
            tls.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"kubeconfig: the client certificate or key is unusable: {exc}") from None


def _private_file(path: Path, content: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content)
    return path


def _constant(token: str) -> Callable[[], str]:
    return lambda: token


def _file_reader(path: Path) -> Callable[[], str]:
    def read() -> str:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ApiCallFailed(f"the colony's own token {path} cannot be read: {exc.strerror}") from None

    return read
