"""A failed TLS handshake with the colony, explained: which check failed and what to do about it.

gRPC reports every handshake failure as UNAVAILABLE, like a colony that is
not running; retrying cannot fix a certificate, so these are told apart
from its details and reported as configuration errors (exit code 2). For a
name mismatch, the names the colony's certificate does carry are fetched
(without trusting them) so the message can say which to use.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

_NAME_MISMATCH = ("hostname verification", "peer name", "hostname mismatch", "ip address mismatch")
_UNTRUSTED = ("certificate_verify_failed", "unable to get local issuer", "self signed", "self-signed")
_EXPIRED = ("certificate has expired", "certificate_expired")
_ANY_TLS = ("handshake", "certificate", "ssl", "tls")


def tls_failure(details: str, *, address: str, ca_file: Path | None, tls_server_name: str) -> str | None:
    """What to check, when ``details`` (an UNAVAILABLE call's) is a TLS failure; None when it is not one."""
    lowered = details.lower()
    host = address.rsplit(":", 1)[0].strip("[]")
    checked = tls_server_name or host
    if any(word in lowered for word in _NAME_MISMATCH):
        carried = certificate_names(address)
        names = f" (it names {', '.join(carried)})" if carried else ""
        return (
            f"TLS error with the colony at {address}: its certificate does not name {checked}{names}; "
            f"pass --tls-server-name with a name it carries (through `kubectl port-forward`: the colony "
            f"Service's name), or dial a name it carries, or re-issue it with `coral colony init --host {checked}` "
            f"({details})"
        )
    if any(word in lowered for word in _EXPIRED):
        return f"TLS error with the colony at {address}: its certificate has expired: re-issue it ({details})"
    if any(word in lowered for word in _UNTRUSTED):
        return (
            f"TLS error with the colony at {address}: its certificate is not signed by {ca_file}: "
            f"pass the colony's own ca.crt (--ca, CORAL_COLONY_CA or the context's ca) ({details})"
        )
    if any(word in lowered for word in _ANY_TLS):
        return (
            f"TLS handshake with the colony at {address} failed: is {address} the colony's gRPC port, "
            f"{ca_file} its ca.crt and {checked} a name its certificate carries "
            f"(coral colony init --host, or --tls-server-name)? ({details})"
        )
    return None


def certificate_names(address: str, *, timeout: float = 2.0) -> list[str]:
    """The DNS names and IP addresses the certificate served at ``address`` carries; [] when that fails."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only to read the names, never to trust anything
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return []
    if der is None:
        return []
    from cryptography import x509

    try:
        names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return []
    return [str(n) for n in names.value.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)
    ]
