"""Operator certificate revocation: the issue-time estimate, the cached revoked set (an injected
clock, a real SQLite file) and ``Authenticator.from_certificate`` refusing revoked ones."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509

from agent.clock import FakeClock
from controlplane.auth import Authenticator, Principal
from controlplane.errors import InvalidRequest
from controlplane.pki import Authority, serial_hex
from controlplane.pki_issue import issue_operator
from controlplane.pki_revocation import OperatorRevocations, issued_at
from controlplane.pki_service import normal_serial
from controlplane.storage.base_pki import UNKNOWN_OPERATOR
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage

T = TypeVar("T")
NOW = 1_800_000_000.0


def _run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 10)

    return asyncio.run(bounded())


def _cert(ca: Authority, name: str, at: float, lifetime: float = 90 * 86400.0) -> bytes:
    return issue_operator(ca, name, "admin", at, lifetime)[1].pem


@pytest.mark.parametrize("lifetime", [60.0, 3600.0, 90 * 86400.0])
def test_the_issue_time_undoes_the_backdating(lifetime: float) -> None:
    ca = Authority.create(NOW - 10)
    cert = x509.load_pem_x509_certificate(_cert(ca, "alice", NOW, lifetime))
    assert cert.not_valid_before_utc.timestamp() < NOW
    assert abs(issued_at(cert) - NOW) <= 1.0  # certificates keep whole seconds


def test_serials_are_normalised_and_junk_is_refused() -> None:
    assert normal_serial(" 0x00AB:CD ") == "abcd"
    assert normal_serial("7f") == "7f"
    for bad in ("", "xyz", "0", "a" * 41, "12 34"):
        with pytest.raises(InvalidRequest, match="not a certificate serial"):
            normal_serial(bad)


def test_a_revoked_serial_or_name_is_refused_and_the_cache_follows_the_clock(
    tmp_path: Path,
) -> None:
    clock = FakeClock(NOW)
    ca = Authority.create(NOW - 10)
    old = x509.load_pem_x509_certificate(_cert(ca, "alice", NOW - 100))
    other = x509.load_pem_x509_certificate(_cert(ca, "bob", NOW - 100))
    store = StorageThread(SqliteStorage(tmp_path / "cp.db"))
    cache = OperatorRevocations(store, clock, ttl=5.0)

    async def scenario() -> None:
        assert await cache.refuses("alice", old) is None
        # written behind the cache's back (another replica): seen once the TTL is over
        await store.run(
            store.storage.revoke_certificate, serial_hex(other), UNKNOWN_OPERATOR, NOW, ""
        )
        assert await cache.refuses("bob", other) is None
        clock.advance(4.9)
        assert await cache.refuses("bob", other) is None
        clock.advance(0.2)
        assert await cache.refuses("bob", other) == f"certificate {serial_hex(other)} is revoked"
        # a name: every certificate issued until then is refused; a later one is not
        await store.run(store.storage.revoke_operator, "alice", clock.now(), "root", "left")
        cache.invalidate()  # this replica wrote it: no wait
        assert "operator 'alice' is revoked" in str(await cache.refuses("alice", old))
        clock.advance(60)
        fresh = x509.load_pem_x509_certificate(_cert(ca, "alice", clock.now()))
        assert await cache.refuses("alice", fresh) is None

    try:
        _run(scenario())
    finally:
        store.close()


def test_the_authenticator_refuses_a_revoked_operator_certificate(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    ca = Authority.create(NOW - 10)
    pem = _cert(ca, "alice", NOW - 100)
    serial = serial_hex(x509.load_pem_x509_certificate(pem))
    store = StorageThread(SqliteStorage(tmp_path / "cp.db"))
    auth = Authenticator(store, clock)
    context = {"x509_pem_cert": [pem]}

    async def scenario() -> None:
        assert await auth.from_certificate(context) == Principal("alice", "admin", "cert")
        await store.run(store.storage.revoke_certificate, serial, "operator:alice", NOW, "")
        auth.revocations.invalidate()
        assert await auth.from_certificate(context) is None
        assert await auth.from_certificate({}) is None
        # storage unreadable: the revoked set is unknown, so a good certificate is refused too
        good = {"x509_pem_cert": [_cert(ca, "bob", NOW - 100)]}
        assert await auth.from_certificate(good) == Principal("bob", "admin", "cert")
        auth.revocations.invalidate()
        store.storage.close()
        assert await auth.from_certificate(good) is None

    try:
        _run(scenario())
    finally:
        store.close()
