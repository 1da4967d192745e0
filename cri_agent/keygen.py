"""Make the agent's key and its certificate signing request, in a child process.

``python -m cri_agent.keygen AGENT_ID`` prints one JSON object,
``{"key_pem": ..., "csr_pem": ...}``, and exits; given a PEM key on stdin, it
makes the request for that key instead of a new one (an enrollment that did
not finish is asked again for the key the agent already kept). The agent runs it at
enrollment and at each renewal instead of importing ``cryptography``
itself: that import costs the agent ~12 MiB of RSS for the rest of its
life, for a few milliseconds of work a day. The child's stdout is a pipe
the agent reads; the key never touches the disk here (the agent writes it
into its identity record, 0600).
"""

from __future__ import annotations

import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def key_and_request(agent_id: str, key_pem: bytes = b"") -> dict[str, str]:
    if key_pem:
        loaded = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError("the kept key is not an ECDSA key")
        key = loaded
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {"key_pem": key_pem.decode(), "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode()}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m cri_agent.keygen AGENT_ID", file=sys.stderr)
        return 2
    json.dump(key_and_request(argv[0], sys.stdin.buffer.read()), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
