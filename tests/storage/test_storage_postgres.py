"""PostgreSQL-only storage behaviour: migrations shared by replicas (applied once under an advisory
lock, a newer database refused), and the places where several writers race (sequence numbers,
the driver lease, concurrent ingestion). Each test runs on its own fresh schema."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

import psycopg
import pytest

from controlplane.storage import open_storage
from controlplane.storage.base import AssignmentPayload, AssignmentRequest, Report, ReportQuery
from controlplane.storage.postgres import PostgresStorage
from controlplane.storage.postgres_db import redact
from controlplane.storage.schema import MIGRATIONS, SchemaError

T = TypeVar("T")


def sign(payload: AssignmentPayload) -> bytes:
    return f"{payload.host_id}:{payload.seq}".encode()


def all_at_once(n: int, fn: Callable[[int], T], timeout: float = 30.0) -> list[T]:
    """Run ``fn(0..n-1)`` on ``n`` threads released together; return results in order."""
    barrier = threading.Barrier(n)
    results: list[T | None] = [None] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout)
            results[i] = fn(i)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def test_open_storage_picks_postgres_for_a_url(pg_url: str) -> None:
    db = open_storage(pg_url)
    assert isinstance(db, PostgresStorage) and db.schema_version() == len(MIGRATIONS)
    db.close()


def test_replicas_starting_together_apply_each_migration_once(pg_url: str) -> None:
    stores = all_at_once(6, lambda _: PostgresStorage(pg_url))
    assert [s.schema_version() for s in stores] == [len(MIGRATIONS)] * 6
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM stanch_schema").fetchone() == (1,)
    for s in stores:
        s.close()


def test_an_upgrade_applies_only_the_new_migration(pg_url: str) -> None:
    PostgresStorage(pg_url).close()
    upgraded = PostgresStorage(pg_url, (*MIGRATIONS, "CREATE TABLE extra (x INTEGER, y BLOB)"))
    assert upgraded.schema_version() == len(MIGRATIONS) + 1
    upgraded.close()
    with psycopg.connect(pg_url) as conn:
        types = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'extra' AND table_schema = current_schema() ORDER BY column_name"
        ).fetchall()
    assert types == [("x", "bigint"), ("y", "bytea")]


def test_a_database_from_a_newer_control_plane_is_refused(pg_url: str) -> None:
    PostgresStorage(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE stanch_schema SET version = %s", (len(MIGRATIONS) + 1,))
    with pytest.raises(SchemaError, match=r"newer than this control plane .*upgrade stanch"):
        PostgresStorage(pg_url)


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    url = "postgresql://stanch:s3cret@127.0.0.1:1/nowhere"
    with pytest.raises(SchemaError, match="cannot connect to PostgreSQL") as caught:
        PostgresStorage(url, connect_timeout=1.0)
    assert "s3cret" not in str(caught.value) and "stanch:***@127.0.0.1:1" in str(caught.value)
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_replicas_issuing_to_one_host_get_distinct_rising_sequences(pg_url: str) -> None:
    stores = [PostgresStorage(pg_url) for _ in range(4)]

    def issue(i: int) -> list[int]:
        seqs = []
        for n in range(10):
            reqs = [
                AssignmentRequest("h1", f"d{i}-{n}", n, "r"),
                AssignmentRequest("h2", "d", 1, ""),
            ]
            seqs.extend(
                a.seq for a in stores[i].issue_assignments(reqs, 1.0, sign) if a.host_id == "h1"
            )
        return seqs

    issued = [seq for seqs in all_at_once(4, issue) for seq in seqs]
    assert sorted(issued) == list(range(1, 41))
    current = stores[0].current_assignments()
    assert current["h1"].seq == 40 and current["h2"].seq == 40
    for s in stores:
        s.close()


def test_only_one_replica_wins_an_expired_lease(pg_url: str) -> None:
    stores = [PostgresStorage(pg_url) for _ in range(4)]
    assert stores[0].acquire_lease("driver", "old", 5.0, 100.0)
    for round_ in range(5):
        now = 200.0 + 10 * round_  # the previous holder's lease has expired each round
        won = all_at_once(
            4, lambda i, now=now: stores[i].acquire_lease("driver", f"r{i}", 5.0, now)
        )
        assert won.count(True) == 1, f"round {round_}: {won}"
    for s in stores:
        s.close()


def test_concurrent_ingestion_stores_every_report_once(pg_url: str) -> None:
    stores = [PostgresStorage(pg_url) for _ in range(3)]

    def ingest(i: int) -> int:
        # every replica receives the same redelivered batches (agents resend after a cut)
        batch = [
            Report(f"h{n % 7}", n, "execution", "p", float(n), "fixed", "", "{}")
            for n in range(500)
        ]
        return stores[i].insert_reports(batch)

    assert sum(all_at_once(3, ingest)) == 500
    assert len(stores[0].reports(ReportQuery(limit=10_000))) == 500
    for s in stores:
        s.close()


def test_connections_the_server_dropped_are_replaced(pg_url: str) -> None:
    """What a PostgreSQL restart or failover does to a replica's pool: every backend gone.
    (The server's own connections are terminated, not the server: it is shared.)"""
    name = f"stanch-{uuid.uuid4().hex[:8]}"
    db = PostgresStorage(f"{pg_url}&application_name={name}")
    db.insert_reports([Report("h1", 1, "execution", "p", 1.0, "fixed", "", "{}")])
    with psycopg.connect(pg_url, autocommit=True) as admin:
        gone = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (name,),
        ).fetchone()
    assert gone is not None and gone[0] >= 1
    assert db.insert_reports([Report("h1", 2, "execution", "p", 2.0, "fixed", "", "{}")]) == 1
    assert [r.id for r in db.reports(ReportQuery())] == [2, 1]
    db.close()
