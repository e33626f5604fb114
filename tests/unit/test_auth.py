"""Operator identity: token minting and parsing, roles, operator certificates, and the
Authenticator against a real SQLite token table (expiry, revocation, throttled last-use)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.clock import FakeClock
from controlplane.auth import (
    INSECURE_DEV,
    ROLES,
    Authenticator,
    Principal,
    actor,
    allows,
    bearer,
    from_certificate,
    mint,
    reset_principal,
    set_principal,
    split_token,
)
from controlplane.errors import InvalidRequest
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage


def test_roles_are_ordered_and_unknown_roles_allow_nothing() -> None:
    for i, have in enumerate(ROLES):
        for j, need in enumerate(ROLES):
            assert allows(Principal("p", have, "token"), need) is (i >= j)
    assert not allows(Principal("p", "root", "token"), "viewer")
    assert not allows(Principal("p", "admin", "token"), "superuser")


def test_minted_token_keeps_only_a_hash_and_parses_back() -> None:
    token, record = mint("alice", "operator", now=1000.0, expires_in=60.0, by="bootstrap")
    parts = split_token(token)
    assert parts is not None
    token_id, secret = parts
    assert token.startswith("stk_") and token_id == record.id
    assert len(secret) >= 43  # token_urlsafe(32): 256 bits
    assert record.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(record)
    assert (record.expires_at, record.role, record.created_by) == (1060.0, "operator", "bootstrap")
    assert mint("bob", "viewer", 5.0)[1].expires_at == 0.0  # no expiry
    assert mint("a", "viewer", 0)[0] != mint("a", "viewer", 0)[0]


@pytest.mark.parametrize("text", ["", "stk_", "stk_abc", "stk__secret", "Bearer x", "abc_def_g"])
def test_malformed_tokens_do_not_parse(text: str) -> None:
    assert split_token(text) is None


def test_mint_refuses_bad_input_with_a_hint() -> None:
    with pytest.raises(InvalidRequest, match="unknown; use one of viewer, operator, admin"):
        mint("alice", "root", 0)
    with pytest.raises(InvalidRequest, match="empty"):
        mint("  ", "admin", 0)
    with pytest.raises(InvalidRequest, match="negative"):
        mint("a", "admin", 0, expires_in=-1)


def test_bearer_header() -> None:
    assert bearer((("authorization", "Bearer stk_a_b"),)) == "stk_a_b"
    assert bearer((("x-other", "1"), ("authorization", b"bearer  tok "))) == "tok"
    assert bearer((("authorization", "Basic dXNlcg=="),)) is None
    assert bearer((("authorization", "Bearer "),)) is None
    assert bearer(None) is None


def test_actor_is_the_principal_not_the_claim() -> None:
    assert actor("claimed") == "claimed"  # outside a call
    reset = set_principal(Principal("alice", "operator", "token"))
    try:
        assert actor("mallory") == "alice"
    finally:
        reset_principal(reset)
    reset = set_principal(INSECURE_DEV)
    try:
        assert actor("bob") == "bob"  # nobody is authenticated; the entry says insecure-dev
        assert actor("") == "insecure-dev"
    finally:
        reset_principal(reset)


def _cert(uris: list[str], units: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, "x")]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in units]
    name = x509.Name(attrs)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if uris:
        sans = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def test_operator_certificate_names_a_principal() -> None:
    pem = _cert(["stanch://operator/alice"], ["operator"])
    assert from_certificate({"x509_pem_cert": [pem]}) == Principal("alice", "operator", "cert")


@pytest.mark.parametrize(
    ("uris", "units"),
    [
        (["stanch://host/web-1"], ["admin"]),  # a host is not an operator
        (["stanch://operator/alice"], ["root"]),  # unknown role
        (["stanch://operator/alice"], []),  # no role
        (["stanch://operator/alice"], ["viewer", "admin"]),  # ambiguous
        (["stanch://operator/a", "stanch://operator/b"], ["admin"]),  # two names
        ([], ["admin"]),  # no SAN at all
    ],
)
def test_other_certificates_are_not_operators(uris: list[str], units: list[str]) -> None:
    assert from_certificate({"x509_pem_cert": [_cert(uris, units)]}) is None


def test_no_certificate_or_garbage_is_no_principal() -> None:
    assert from_certificate({}) is None
    assert from_certificate({"x509_pem_cert": [b"not a certificate"]}) is None


def test_authenticator_checks_hash_expiry_revocation_and_throttles_last_use(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        clock = FakeClock(1_000_000.0)
        store = StorageThread(SqliteStorage(tmp_path / "cp.db"))
        auth = Authenticator(store, clock)
        auth.dev_mode = True
        try:
            assert await auth.dev_principal() == INSECURE_DEV  # no token yet
            token, record = await auth.create("alice", "operator", 3600.0, "admin-1")
            assert await auth.dev_principal() is None  # from now on tokens are required
            who = await auth.from_token(token)
            assert who == Principal("alice", "operator", "token")
            stored = await store.run(store.storage.api_token, record.id)
            assert stored is not None and stored.last_used_at == clock.now()

            clock.advance(10)
            assert await auth.from_token(token) == who
            stored = await store.run(store.storage.api_token, record.id)
            assert stored is not None and stored.last_used_at == clock.now() - 10  # throttled

            wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
            assert await auth.from_token(wrong) is None
            assert await auth.from_token("stk_unknown_secret") is None
            assert await auth.from_token("garbage") is None

            clock.advance(3600)
            assert await auth.from_token(token) is None  # expired

            other, rec2 = await auth.create("ci", "viewer", 0.0, "admin-1")
            assert await auth.from_token(other) is not None
            revoked = await auth.revoke(other)  # the whole token works as the id too
            assert revoked is not None and revoked.revoked_at == clock.now()
            assert await auth.from_token(other) is None
            assert await auth.revoke("nope") is None
            assert [t.id for t in await auth.tokens()] == []
            assert {t.id for t in await auth.tokens(include_inactive=True)} == {
                record.id,
                rec2.id,
            }
        finally:
            await asyncio.get_running_loop().run_in_executor(None, store.close)

    asyncio.run(scenario())


def test_legacy_shared_token_is_one_admin(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = StorageThread(SqliteStorage(tmp_path / "cp.db"))
        auth = Authenticator(store, FakeClock(0.0))
        auth.dev_mode = True
        auth.accept_legacy("s3cret")
        try:
            who = await auth.from_token("s3cret")
            assert who is not None and who.role == "admin"
            assert await auth.from_token("s3cre") is None
            assert await auth.dev_principal() is None  # a configured token ends dev mode
        finally:
            await asyncio.get_running_loop().run_in_executor(None, store.close)

    asyncio.run(scenario())
