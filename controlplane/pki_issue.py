"""Issuing leaf certificates: hosts (from a CSR, at enrollment and renewal) and operators.

A host certificate is bound to one host id: CN = host id and SAN URI ``stanch://host/<id>``,
client-auth only, short-lived (7 days by default; the agent renews at two thirds). The CSR must
be an ECDSA P-256 request, correctly self-signed, that names exactly that host: whatever else it
asks for (extensions, other names) is ignored, since the control plane writes every field.

An operator certificate (``opsctl pki issue-operator``) carries SAN URI
``stanch://operator/<name>`` and the role in the subject's OU; the auth interceptor reads both.

Enrollment tokens are ``<id>.<secret>``: the id finds the row, only ``sha256(secret)`` is stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.fleet.tls import host_uri, key_pem, new_key
from controlplane.auth import OPERATOR_URI, ROLES
from controlplane.pki import Authority, Issued

HOST_LIFETIME = 7 * 86400.0
OPERATOR_LIFETIME = 90 * 86400.0
HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
MAX_CSR = 8192


class CsrRefused(ValueError):
    """The CSR cannot be signed; the message is for the control plane's log only."""


def valid_host_id(host_id: str) -> bool:
    return HOST_ID.fullmatch(host_id) is not None


def check_csr(csr_pem: bytes, host_id: str) -> ec.EllipticCurvePublicKey:
    """The CSR's public key, when the CSR is a well-signed P-256 request for ``host_id``."""
    if not valid_host_id(host_id):
        raise CsrRefused(f"host id {host_id[:80]!r} is not valid")
    if len(csr_pem) > MAX_CSR:
        raise CsrRefused(f"CSR of {len(csr_pem)} bytes is over {MAX_CSR}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CsrRefused(f"not a PEM CSR: {exc}") from None
    if not csr.is_signature_valid:
        raise CsrRefused("the CSR's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CsrRefused("the CSR's key is not ECDSA P-256")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != host_id:
        raise CsrRefused(f"the CSR's CN does not name host {host_id!r}")
    return key


def issue_host(
    ca: Authority, csr_pem: bytes, host_id: str, now: float, lifetime: float = HOST_LIFETIME
) -> Issued:
    """Sign a host certificate for ``host_id`` from its CSR (raises :class:`CsrRefused`)."""
    key = check_csr(csr_pem, host_id)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_id)])
    return ca.sign(
        subject,
        key,
        [x509.UniformResourceIdentifier(host_uri(host_id))],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        now,
        lifetime,
    )


def issue_operator(
    ca: Authority, name: str, role: str, now: float, lifetime: float = OPERATOR_LIFETIME
) -> tuple[bytes, Issued]:
    """A new operator key (PEM) and its client certificate carrying ``role``."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if not valid_host_id(name):
        raise ValueError(f"operator name {name!r}: letters, digits, '.', '_' and '-' only")
    key = new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )
    issued = ca.sign(
        subject,
        key.public_key(),
        [x509.UniformResourceIdentifier(f"{OPERATOR_URI}{name}")],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        now,
        lifetime,
    )
    return key_pem(key), issued


@dataclass(frozen=True)
class NewToken:
    """A fresh enrollment token: ``text`` is shown once, ``secret_hash`` is stored."""

    id: str
    text: str
    secret_hash: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> NewToken:
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewToken(token_id, f"{token_id}.{secret}", hash_secret(secret))


def split_token(text: str) -> tuple[str, str] | None:
    """``(id, sha256 of the secret)``, or None when ``text`` is not shaped like a token."""
    token_id, sep, secret = text.strip().partition(".")
    if not sep or not re.fullmatch(r"[0-9a-f]{16}", token_id) or not 20 <= len(secret) <= 128:
        return None
    return token_id, hash_secret(secret)
