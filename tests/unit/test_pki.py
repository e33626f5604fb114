"""The CA and what it issues: files and modes, key types, names, CSR checks, tokens, limits,
and the PKI tables on a real SQLite file."""

from __future__ import annotations

import ipaddress
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.fleet.tls import IdentityFiles, cert_window, enrollment_address, make_csr, new_key
from controlplane.pki import Authority, PkiError, init_pki
from controlplane.pki_issue import (
    CsrRefused,
    issue_host,
    issue_operator,
    new_token,
    split_token,
)
from controlplane.ratelimit import EnrollLimiter, EnrollLimits, Rate, peer_address
from controlplane.storage.base_pki import CertificateRecord, EnrollmentTokenRecord
from controlplane.storage.sqlite import SqliteStorage

NOW = 1_800_000_000.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def test_init_writes_a_p256_ca_and_a_server_certificate_with_private_keys_0600(
    tmp_path: Path,
) -> None:
    paths = init_pki(tmp_path / "pki", ["cp.example.com", "10.0.0.7"], time.time())
    assert _mode(paths.ca_key) == 0o600 and _mode(paths.server_key) == 0o600
    ca = Authority.load(paths.ca_cert, paths.ca_key)
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca.cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cp.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_init_keeps_an_existing_ca_unless_forced(tmp_path: Path) -> None:
    first = init_pki(tmp_path, [], NOW)
    before = first.ca_cert.read_bytes()
    with pytest.raises(PkiError, match="a CA already exists here"):
        init_pki(tmp_path, [], NOW)
    assert first.ca_cert.read_bytes() == before
    init_pki(tmp_path, [], NOW, force=True)
    assert first.ca_cert.read_bytes() != before


def test_a_host_certificate_is_bound_to_the_host_id_and_short_lived() -> None:
    ca = Authority.create(NOW)
    key = new_key()
    issued = issue_host(ca, make_csr(key, "web-1"), "web-1", NOW, lifetime=3600)
    cert = x509.load_pem_x509_certificate(issued.pem)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web-1"
    assert _uris(cert) == ["stanch://host/web-1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert issued.not_after == NOW + 3600 and issued.serial == format(cert.serial_number, "x")
    window = cert_window(issued.pem)
    assert window.not_after == NOW + 3600
    assert window.renew_at == pytest.approx(NOW + 3600 - (3600 + 300) / 3)


def test_csrs_that_are_not_for_this_host_or_not_p256_are_refused() -> None:
    ca = Authority.create(NOW)
    with pytest.raises(CsrRefused, match="CN does not name host"):
        issue_host(ca, make_csr(new_key(), "web-1"), "web-2", NOW)
    with pytest.raises(CsrRefused, match="not a PEM CSR"):
        issue_host(ca, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "web-1", NOW)
    with pytest.raises(CsrRefused, match="not valid"):
        issue_host(ca, make_csr(new_key(), "web-1"), "../etc", NOW)
    rsa_key = rsa.generate_private_key(65537, 2048)
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web-1")]))
        .sign(rsa_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CsrRefused, match="not ECDSA P-256"):
        issue_host(ca, rsa_csr, "web-1", NOW)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(CsrRefused, match="not ECDSA P-256"):
        issue_host(ca, make_csr(p384, "web-1"), "web-1", NOW)


def test_an_operator_certificate_carries_name_and_role() -> None:
    ca = Authority.create(NOW)
    key_pem, issued = issue_operator(ca, "alice", "operator", NOW)
    cert = x509.load_pem_x509_certificate(issued.pem)
    key = serialization.load_pem_private_key(key_pem, None)
    assert cert.public_key() == key.public_key()
    assert _uris(cert) == ["stanch://operator/alice"]
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in ou] == ["operator"]
    with pytest.raises(ValueError, match="role 'root'"):
        issue_operator(ca, "alice", "root", NOW)


def test_tokens_are_stored_as_hashes_and_parsed_strictly() -> None:
    token = new_token()
    assert token.secret_hash not in token.text
    assert split_token(token.text) == (token.id, token.secret_hash)
    assert split_token(token.text + "x") != (token.id, token.secret_hash)
    for bad in ("", "abc", "nothex0000000000.secretsecretsecretsecret", token.id + "."):
        assert split_token(bad) is None


def test_the_identity_files_are_private(tmp_path: Path) -> None:
    files = IdentityFiles(tmp_path / "tls")
    key = new_key()
    issued = issue_host(Authority.create(NOW), make_csr(key, "h"), "h", NOW)
    files.save(key, issued.pem)
    assert files.exists() and _mode(files.key) == 0o600 and _mode(files.cert) == 0o600
    assert _mode(files.directory) == 0o700


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_limiter_trips_per_peer_and_overall_and_refills_with_time() -> None:
    clock = FakeTime()
    limits = EnrollLimits(per_peer=Rate(1.0, 3), overall=Rate(2.0, 5))
    limiter = EnrollLimiter(clock, limits)
    assert [limiter.allow("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert [limiter.allow("10.0.0.2") for _ in range(3)] == [True, True, False]  # overall: 5
    clock.t += 1.0  # +1 per peer, +2 overall
    assert limiter.allow("10.0.0.1") and limiter.allow("10.0.0.2")
    assert not limiter.allow("10.0.0.3")


def test_the_limiter_forgets_idle_peers_past_its_bound() -> None:
    clock = FakeTime()
    limiter = EnrollLimiter(clock, EnrollLimits(Rate(1.0, 2), Rate(1000, 1000), max_peers=4))
    for n in range(20):
        assert limiter.allow(f"10.0.0.{n}")
        clock.t += 5
    assert len(limiter._peers) <= 4  # noqa: SLF001 (the bound is the behaviour under test)


def test_peer_addresses_lose_their_port() -> None:
    assert peer_address("ipv4:10.0.0.1:5123") == "10.0.0.1"
    assert peer_address("ipv6:[::1]:5123") == "::1"


def _token(db: SqliteStorage, host: str = "", expires: float = NOW + 60) -> tuple[str, str]:
    token = new_token()
    db.add_enrollment_token(EnrollmentTokenRecord(token.id, token.secret_hash, host, NOW, expires))
    parsed = split_token(token.text)
    assert parsed is not None
    return parsed


def test_tokens_are_single_use_expire_and_bind_to_a_host(tmp_path: Path) -> None:
    db = SqliteStorage(tmp_path / "cp.db")
    tid, digest = _token(db)
    assert db.consume_enrollment_token(tid, "0" * 64, "a", NOW) == "wrong_secret"
    assert db.consume_enrollment_token(tid, digest, "a", NOW) == "ok"
    assert db.consume_enrollment_token(tid, digest, "a", NOW) == "used"
    assert db.consume_enrollment_token("f" * 16, digest, "a", NOW) == "unknown"
    tid, digest = _token(db, expires=NOW + 1)
    assert db.consume_enrollment_token(tid, digest, "a", NOW + 1) == "expired"
    tid, digest = _token(db, host="b")
    assert db.consume_enrollment_token(tid, digest, "a", NOW) == "wrong_host"
    assert db.consume_enrollment_token(tid, digest, "b", NOW) == "ok"


def test_an_unbound_token_cannot_take_over_an_enrolled_host(tmp_path: Path) -> None:
    db = SqliteStorage(tmp_path / "cp.db")
    db.add_certificate(CertificateRecord("ab", "web-1", NOW - 10, NOW + 100, NOW - 10))
    tid, digest = _token(db, expires=NOW + 1000)
    assert db.consume_enrollment_token(tid, digest, "web-1", NOW) == "wrong_host"
    assert db.consume_enrollment_token(tid, digest, "web-1", NOW + 200) == "ok"  # it expired
    assert db.revoke_host("web-1", NOW, "alice", "stolen") == 1
    assert db.revoke_host("web-1", NOW + 5, "bob", "again") == 0
    revoked = db.revoked_host("web-1")
    assert revoked is not None and revoked.revoked_by == "alice"
    cert = db.certificate("ab")
    assert cert is not None and cert.revoked_at == NOW and cert.reason == "stolen"
    assert [h.host_id for h in db.revoked_hosts()] == ["web-1"]


def test_the_enrollment_port_defaults_to_the_next_one() -> None:
    assert enrollment_address("cp.example.com:7443") == "cp.example.com:7444"
    assert enrollment_address("[::1]:7443") == "[::1]:7444"
    assert enrollment_address("127.0.0.1:0") == "127.0.0.1:0"  # any free port, both
