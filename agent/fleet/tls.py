"""The agent's TLS identity: its P-256 key, its certificate, and the channel credentials.

The key is made on the host and never leaves it: enrollment sends a CSR (``make_csr``), the
control plane returns a certificate bound to the host id (CN and the SAN URI
``stanch://host/<host id>``). ECDSA P-256 rather than Ed25519, because grpcio's TLS stack
refuses Ed25519 certificates in the handshake.

Files live in ``<state_dir>/tls/``: ``agent.key`` (0600, written before any certificate that
names it) and ``agent.crt``. Both are replaced atomically (write, fsync, rename), so a crash
mid-renewal leaves the old pair or the new pair, never half of one. The control plane imports
the URI helpers from here (the arrows point from the control plane to the agent, never back).

``cryptography`` is imported inside the functions that need it: a plaintext agent never maps it
(``tests/integration/test_fleet_footprint.py``), and a TLS agent only once it enrolls, renews or
reads its certificate's dates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

HOST_URI_PREFIX = "stanch://host/"
RENEW_FRACTION = 1 / 3
"""Renew once less than this share of the certificate's lifetime remains."""


def enrollment_address(address: str) -> str:
    """The enrollment port's default: the mTLS address with the port plus one (port 0, "any
    free port", stays 0)."""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + 1 if port.isdigit() and int(port) else 0}"


def host_uri(host_id: str) -> str:
    return f"{HOST_URI_PREFIX}{host_id}"


def new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(data, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an ECDSA private key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, host_id: str) -> bytes:
    """A CSR naming ``host_id`` as the CN and as the SAN URI, signed by ``key``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_id)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(host_uri(host_id))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CertWindow:
    not_before: float
    not_after: float

    @property
    def renew_at(self) -> float:
        """When less than ``RENEW_FRACTION`` of the lifetime remains."""
        return self.not_after - (self.not_after - self.not_before) * RENEW_FRACTION


def cert_window(pem: bytes) -> CertWindow:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    return CertWindow(cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 from the first byte on disk."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class IdentityFiles:
    """Where the agent keeps its key and certificate (``<state_dir>/tls``)."""

    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "agent.key"

    @property
    def cert(self) -> Path:
        return self.directory / "agent.crt"

    def exists(self) -> bool:
        return self.key.is_file() and self.cert.is_file()

    def save(self, key: ec.EllipticCurvePrivateKey, cert: bytes) -> None:
        """Key first: a certificate on disk always has its key beside it."""
        write_private(self.key, key_pem(key))
        write_private(self.cert, cert)
