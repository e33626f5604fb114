"""The control plane's certificate authority: ``opsctl pki init`` and loading it to issue.

``init_pki(dir)`` writes:

- ``ca.crt`` / ``ca.key`` (0600): a self-signed ECDSA P-256 CA (path length 0: it signs leaf
  certificates only). Agents and opsctl trust ``ca.crt``; the control plane verifies client
  certificates against it and, holding ``ca.key``, issues them at enrollment.
- ``server.crt`` / ``server.key`` (0600): the control plane's serving certificate, its SANs
  from ``--san`` (DNS names and IP addresses; default localhost, 127.0.0.1, ::1).

P-256 throughout: grpcio's TLS refuses Ed25519 certificates in the handshake. Issuing (host
certificates from CSRs, operator certificates) is in ``controlplane.pki_issue``.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.fleet.tls import key_pem, load_key, new_key, write_private
from controlplane.errors import ControlPlaneError

DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
SERVER_DAYS = 397
SKEW = datetime.timedelta(minutes=5)
"""Certificates start this long before "now": a host whose clock is a little behind still
accepts them."""


class PkiError(ControlPlaneError):
    """A CA or certificate file is missing, unreadable, or not what it should be."""


@dataclass(frozen=True)
class PkiPaths:
    """The files ``opsctl pki init`` writes, by name, in one directory."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"


@dataclass(frozen=True)
class Issued:
    """A certificate just signed: its PEM and the facts the ``certificates`` table keeps."""

    pem: bytes
    serial: str
    not_before: float
    not_after: float


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def pem_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def general_names(sans: Sequence[str]) -> list[x509.GeneralName]:
    """``--san`` values: an IP address when it parses as one, else a DNS name."""
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    return names


def _at(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC)


@dataclass(frozen=True)
class Authority:
    """The CA: its key and certificate; signs leaf certificates (see ``pki_issue``)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return pem_of(self.cert)

    @classmethod
    def create(cls, now: float, common_name: str = "Stanch fleet CA") -> Authority:
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_at(now) - SKEW)
            .not_valid_after(_at(now) + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        return cls(key, builder.sign(key, hashes.SHA256()))

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Authority:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = load_key(key_path.read_bytes())
        except OSError as exc:
            raise PkiError(
                f"{exc.filename}: {exc.strerror}; create the CA with `opsctl pki init --dir DIR`"
            ) from None
        except ValueError as exc:
            raise PkiError(
                f"{cert_path} / {key_path}: not a PEM certificate and key: {exc}"
            ) from None
        if cert.public_key() != key.public_key():
            raise PkiError(f"{key_path}: this key does not belong to {cert_path}")
        return cls(key, cert)

    def sign(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        sans: Sequence[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        now: float,
        lifetime: float,
    ) -> Issued:
        """A leaf certificate: not a CA, digital signature only, one extended key usage."""
        # Backdated for clock skew, but never by more than a tenth of the lifetime: the agent
        # renews at two thirds of (not_after - not_before), which must lie in the future.
        start = _at(now) - min(SKEW, datetime.timedelta(seconds=lifetime / 10))
        end = _at(now + lifetime)
        if end > self.cert.not_valid_after_utc:
            end = self.cert.not_valid_after_utc  # never outlive the CA
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(pem_of(cert), serial_hex(cert), start.timestamp(), end.timestamp())

    def issue_server(
        self, sans: Sequence[str], now: float, lifetime: float = SERVER_DAYS * 86400.0
    ) -> tuple[bytes, Issued]:
        """The control plane's serving key (PEM) and certificate."""
        key = new_key()
        first = sans[0] if sans else "stanch-cp"
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)])
        issued = self.sign(
            subject,
            key.public_key(),
            general_names(sans),
            ExtendedKeyUsageOID.SERVER_AUTH,
            now,
            lifetime,
        )
        return key_pem(key), issued


def init_pki(directory: Path, sans: Sequence[str], now: float, force: bool = False) -> PkiPaths:
    """Create the CA and the server certificate in ``directory``. An existing CA is kept
    unless ``force``: replacing it would strand every enrolled host."""
    paths = PkiPaths(directory)
    if paths.ca_key.exists() and not force:
        raise PkiError(
            f"{paths.ca_key}: a CA already exists here; every enrolled host trusts it. "
            "Use another --dir, or --force to replace it (every host must then re-enroll)"
        )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = Authority.create(now)
    write_private(paths.ca_key, key_pem(ca.key))
    write_private(paths.ca_cert, ca.cert_pem)
    paths.ca_cert.chmod(0o644)
    server_key, server = ca.issue_server(list(sans) or list(DEFAULT_SANS), now)
    write_private(paths.server_key, server_key)
    write_private(paths.server_cert, server.pem)
    paths.server_cert.chmod(0o644)
    return paths
