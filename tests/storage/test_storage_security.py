"""The security half of the storage contract (API tokens, the audit chain, enrollment tokens,
certificates, revoked hosts), on every backend; on PostgreSQL also under concurrent replicas."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest
from pg_schema import fresh_schema

from agent.clock import FakeClock
from controlplane.pki_revocation import OperatorRevocations
from controlplane.storage.base import Storage
from controlplane.storage.base_auth import (
    GENESIS,
    ApiTokenRecord,
    AuditDraft,
    AuditQuery,
    draft_of,
    entry_hash,
)
from controlplane.storage.base_pki import (
    UNKNOWN_OPERATOR,
    CertificateRecord,
    EnrollmentTokenRecord,
    RevokedOperators,
)
from controlplane.storage.postgres import PostgresStorage
from controlplane.storage.runner import StorageThread
from controlplane.storage.schema import MIGRATIONS
from controlplane.storage.sqlite import SqliteStorage


def draft(
    at: float, actor: str = "alice", action: str = "/stanch.v1.Admin/StartRollout"
) -> AuditDraft:
    return AuditDraft(at, actor, "operator", "token", action, "r1", "127.0.0.1", "ok", '{"n":1}')


def test_api_tokens_round_trip_and_revocation_keeps_the_first_time(storage: Storage) -> None:
    assert not storage.any_api_token()
    token = ApiTokenRecord("t1", "ci", "operator", "ab" * 32, 10.0, expires_at=99.0)
    storage.put_api_token(token)
    storage.put_api_token(ApiTokenRecord("t0", "admin", "admin", "cd" * 32, 5.0))
    assert storage.any_api_token() and storage.api_token("t1") == token
    assert [t.id for t in storage.api_tokens()] == ["t0", "t1"]
    storage.touch_api_token("t1", 20.0)
    storage.touch_api_token("t1", 15.0)  # throttled writes may arrive late: never moves back
    revoked = storage.revoke_api_token("t1", 30.0)
    assert revoked is not None and revoked.revoked_at == 30.0 and revoked.last_used_at == 20.0
    again = storage.revoke_api_token("t1", 40.0)
    assert again is not None and again.revoked_at == 30.0
    assert storage.revoke_api_token("nope", 40.0) is None and storage.api_token("nope") is None


def test_the_audit_log_is_a_hash_chain(storage: Storage) -> None:
    first = storage.append_audit(draft(1.0))
    second = storage.append_audit(draft(2.0, actor="bob", action="/stanch.v1.Admin/Pause"))
    assert (first.seq, first.prev_hash) == (1, GENESIS)
    assert second.prev_hash == first.hash == entry_hash(1, draft(1.0), GENESIS)
    assert storage.audit_entries(AuditQuery()) == [first, second]
    assert storage.audit_entries(AuditQuery(actor="bob")) == [second]
    assert storage.audit_entries(AuditQuery(since=1.5)) == [second]
    assert storage.audit_entries(AuditQuery(limit=1)) == [second]  # the newest, oldest first
    assert list(storage.audit_range(1, 10)) == [second]
    assert draft_of(second) == draft(2.0, actor="bob", action="/stanch.v1.Admin/Pause")


def test_an_enrollment_token_is_used_once_and_only_by_its_host(storage: Storage) -> None:
    storage.add_enrollment_token(EnrollmentTokenRecord("e1", "s" * 64, "web-1", 1.0, 100.0))
    storage.add_enrollment_token(EnrollmentTokenRecord("e2", "s" * 64, "", 1.0, 100.0))
    assert storage.consume_enrollment_token("zz", "s" * 64, "web-1", 2.0) == "unknown"
    assert storage.consume_enrollment_token("e1", "x" * 64, "web-1", 2.0) == "wrong_secret"
    assert storage.consume_enrollment_token("e1", "s" * 64, "web-2", 2.0) == "wrong_host"
    assert storage.consume_enrollment_token("e1", "s" * 64, "web-1", 200.0) == "expired"
    assert storage.consume_enrollment_token("e1", "s" * 64, "web-1", 2.0) == "ok"
    assert storage.consume_enrollment_token("e1", "s" * 64, "web-1", 3.0) == "used"
    storage.add_certificate(CertificateRecord("c1", "web-1", 1.0, 1000.0, 2.0))
    # an unbound token cannot take over a host that holds a live certificate
    assert storage.consume_enrollment_token("e2", "s" * 64, "web-1", 3.0) == "wrong_host"
    assert storage.consume_enrollment_token("e2", "s" * 64, "web-9", 3.0) == "ok"


def test_certificates_and_revoked_hosts(storage: Storage) -> None:
    storage.add_certificate(CertificateRecord("c1", "web-1", 1.0, 1000.0, 2.0))
    storage.add_certificate(CertificateRecord("c2", "web-1", 1.0, 1000.0, 3.0))
    storage.add_certificate(CertificateRecord("c3", "web-2", 1.0, 1000.0, 4.0))
    assert [c.serial for c in storage.certificates()] == ["c3", "c2", "c1"]
    assert [c.serial for c in storage.certificates("web-1")] == ["c2", "c1"]
    assert storage.revoke_host("web-1", 50.0, "alice", "stolen") == 2
    assert storage.revoke_host("web-1", 60.0, "bob", "again") == 0
    revoked = storage.revoked_host("web-1")
    assert revoked is not None and (revoked.revoked_by, revoked.at) == ("alice", 50.0)
    cert = storage.certificate("c1")
    assert cert is not None and (cert.revoked_at, cert.reason) == (50.0, "stolen")
    assert storage.certificate("zz") is None and storage.revoked_host("web-2") is None
    assert [h.host_id for h in storage.revoked_hosts()] == ["web-1"]


def test_a_certificate_is_revoked_by_serial_known_or_not(storage: Storage) -> None:
    storage.add_certificate(CertificateRecord("c1", "web-1", 1.0, 1000.0, 2.0))
    assert storage.revoked_operators() == RevokedOperators()
    # A host's serial: its own row is marked, its host kept; not an operator's serial.
    assert storage.revoke_certificate("c1", UNKNOWN_OPERATOR, 10.0, "lost")
    assert not storage.revoke_certificate("c1", UNKNOWN_OPERATOR, 20.0, "again")
    host_cert = storage.certificate("c1")
    assert host_cert is not None
    assert (host_cert.host_id, host_cert.revoked_at, host_cert.reason) == ("web-1", 10.0, "lost")
    # An operator's serial, never recorded (issued offline): added as revoked.
    assert storage.revoke_certificate("ab12", "operator:alice", 30.0, "left")
    assert storage.revoke_certificate("cd34", UNKNOWN_OPERATOR, 31.0, "")
    op_cert = storage.certificate("ab12")
    assert op_cert is not None
    assert (op_cert.host_id, op_cert.revoked_at, op_cert.reason) == ("operator:alice", 30.0, "left")
    assert storage.revoked_operators().serials == frozenset({"ab12", "cd34"})
    assert storage.revoked_host("web-1") is None  # a serial is not the whole host


def test_revoked_certificates_since_lists_recent_host_revocations_oldest_first(
    storage: Storage,
) -> None:
    assert storage.revoked_certificates_since(0.0) == []
    for serial, host in (("c1", "web-1"), ("c2", "web-1"), ("c3", "web-2"), ("c4", "web-3")):
        storage.add_certificate(CertificateRecord(serial, host, 1.0, 1000.0, 2.0))
    storage.revoke_certificate("c3", UNKNOWN_OPERATOR, 20.0, "lost")
    storage.revoke_host("web-1", 30.0, "alice", "stolen")  # both of its certificates
    storage.revoke_certificate("ab12", "operator:alice", 40.0, "left")  # an operator's: never
    storage.revoke_operator("bob", 45.0, "root", "")
    found = storage.revoked_certificates_since(0.0)
    assert [(c.serial, c.host_id, c.revoked_at) for c in found] == [
        ("c3", "web-2", 20.0),
        ("c1", "web-1", 30.0),
        ("c2", "web-1", 30.0),
    ]
    assert found[0].reason == "lost" and found[1].reason == "stolen"
    assert [c.serial for c in storage.revoked_certificates_since(30.0)] == ["c1", "c2"]  # at, too
    assert storage.revoked_certificates_since(30.5) == []  # c4, never revoked, never listed


def test_an_operator_name_revocation_moves_forward_and_is_not_a_host(storage: Storage) -> None:
    storage.revoke_operator("alice", 50.0, "root", "left")
    storage.revoke_operator("alice", 40.0, "root", "late write")  # never moves back
    storage.revoke_operator("bob", 60.0, "root", "")
    assert storage.revoked_operators().names == {"alice": 50.0, "bob": 60.0}
    storage.revoke_operator("alice", 70.0, "carol", "again")  # cuts what was issued since
    assert storage.revoked_operators().names == {"alice": 70.0, "bob": 60.0}
    record = storage.revoked_host("operator:alice")
    assert record is not None and (record.revoked_by, record.reason) == ("carol", "again")
    assert storage.revoked_host("alice") is None


def test_unrevoking_a_host_keeps_its_certificates_revoked(storage: Storage) -> None:
    storage.add_certificate(CertificateRecord("c1", "web-1", 1.0, 1000.0, 2.0))
    storage.revoke_host("web-1", 50.0, "alice", "stolen")
    storage.revoke_host("web-2", 51.0, "alice", "")
    assert storage.unrevoke_host("web-1")
    assert not storage.unrevoke_host("web-1") and not storage.unrevoke_host("web-9")
    assert storage.revoked_host("web-1") is None
    assert [h.host_id for h in storage.revoked_hosts()] == ["web-2"]
    cert = storage.certificate("c1")
    assert cert is not None and cert.revoked_at == 50.0
    # a token bound to the host enrolls it again
    storage.add_enrollment_token(EnrollmentTokenRecord("e1", "s" * 64, "web-1", 60.0, 100.0))
    assert storage.consume_enrollment_token("e1", "s" * 64, "web-1", 61.0) == "ok"
    # and revoking it again is a new record
    assert storage.revoke_host("web-1", 70.0, "bob", "again") == 0  # c1 was already
    again = storage.revoked_host("web-1")
    assert again is not None and (again.at, again.revoked_by) == (70.0, "bob")


def test_replicas_appending_audit_entries_at_once_keep_one_chain(pg_url: str) -> None:
    stores = [PostgresStorage(pg_url) for _ in range(4)]
    start = threading.Barrier(4)

    def append(i: int) -> None:
        start.wait(10)
        for n in range(15):
            stores[i].append_audit(draft(float(n), actor=f"r{i}"))

    threads = [threading.Thread(target=append, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    chain = list(stores[0].audit_range(0, 1000))
    assert [e.seq for e in chain] == list(range(1, 61))
    prev = GENESIS
    for e in chain:
        assert e.prev_hash == prev and e.hash == entry_hash(e.seq, draft_of(e), prev)
        prev = e.hash
    for s in stores:
        s.close()


def test_replicas_consuming_one_token_at_once_let_one_through(pg_url: str) -> None:
    stores = [PostgresStorage(pg_url) for _ in range(4)]
    stores[0].add_enrollment_token(EnrollmentTokenRecord("e1", "s" * 64, "", 1.0, 100.0))
    start = threading.Barrier(4)
    results: list[str] = []

    def consume(i: int) -> None:
        start.wait(10)
        results.append(stores[i].consume_enrollment_token("e1", "s" * 64, f"web-{i}", 2.0))

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["ok", "used", "used", "used"]
    for s in stores:
        s.close()


def test_a_replica_sees_another_replicas_revocation_within_the_cache_ttl(pg_url: str) -> None:
    """Replica B caches the revoked set; A's write reaches B once B's TTL has run out."""

    async def scenario() -> None:
        clock = FakeClock()
        a, b = StorageThread(PostgresStorage(pg_url)), StorageThread(PostgresStorage(pg_url))
        cache = OperatorRevocations(b, clock, ttl=5.0)
        try:
            assert (await cache.current()).serials == frozenset()
            await a.run(a.storage.revoke_certificate, "ab12", UNKNOWN_OPERATOR, 1.0, "")
            await a.run(a.storage.revoke_operator, "alice", 2.0, "root", "")
            assert (await cache.current()).serials == frozenset()  # cached, within the TTL
            clock.advance(5.0)
            seen = await cache.current()
            assert seen.serials == frozenset({"ab12"}) and seen.names == {"alice": 2.0}
        finally:
            a.close()
            b.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_v4_database_gains_the_revocation_index_in_place(backend: str, tmp_path: Path) -> None:
    """Schema v5 adds ``certificates_by_revocation`` to a database that already holds revoked
    certificates; the sweep's query then finds them."""
    before_v5 = MIGRATIONS[:4]
    revoked = CertificateRecord("c1", "web-1", 1.0, 1000.0, 2.0, revoked_at=50.0, reason="old")
    if backend == "sqlite":
        old = SqliteStorage(tmp_path / "cp.db", before_v5)
        old.add_certificate(revoked)
        old.close()
        storage: Storage = SqliteStorage(tmp_path / "cp.db")
        try:
            assert storage.schema_version() == len(MIGRATIONS)
            assert storage.revoked_certificates_since(0.0) == [revoked]
        finally:
            storage.close()
        raw = sqlite3.connect(tmp_path / "cp.db")
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        raw.close()
        assert "certificates_by_revocation" in names
        return
    with fresh_schema() as url:
        pg_old = PostgresStorage(url, before_v5)
        pg_old.add_certificate(revoked)
        pg_old.close()
        pg = PostgresStorage(url)
        try:
            assert pg.schema_version() == len(MIGRATIONS)
            assert pg.revoked_certificates_since(0.0) == [revoked]
        finally:
            pg.close()
        with psycopg.connect(url) as conn:
            found = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'certificates_by_revocation'"
                " AND schemaname = current_schema()"
            ).fetchone()
        assert found is not None and "WHERE (revoked_at" in str(found[0]), found
