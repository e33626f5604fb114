"""Approval decisions queued for another replica's stream, on both backends: listed while waiting
and unexpired, claimed by exactly one replica (also when several claim at once, from separate
connections), given back only by the replica that claimed it, never claimed once expired, and
purged at expiry; a v3 database gains the table in place."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from pg_schema import fresh_schema

from controlplane.storage.base import Storage
from controlplane.storage.base_decisions import DecisionRecord
from controlplane.storage.postgres import PostgresStorage
from controlplane.storage.schema import MIGRATIONS
from controlplane.storage.sqlite import SqliteStorage

T0 = 1_800_000_000.0
BEFORE_V4 = MIGRATIONS[:3]


def record(nonce: str, host: str = "h1", at: float = T0, ttl: float = 300.0) -> DecisionRecord:
    return DecisionRecord(
        host_id=host,
        nonce=nonce,
        approval_id=f"ap-{nonce}",
        envelope=b'{"payloadType": "x", "nonce": "' + nonce.encode() + b'"}',
        created_at=at,
        expires_at=at + ttl,
        queued_by="cp-b",
    )


def test_a_queued_decision_is_read_back_as_written(storage: Storage) -> None:
    d = record("n1")
    storage.queue_decision(d)
    assert storage.decision("n1") == d
    assert storage.decision("n2") is None
    assert storage.undelivered_decisions(T0) == [d]


def test_a_decision_is_claimed_once(storage: Storage) -> None:
    storage.queue_decision(record("n1"))
    assert storage.claim_decision("n1", "cp-a", T0 + 1)
    assert not storage.claim_decision("n1", "cp-a", T0 + 2)  # not even by the same replica
    assert not storage.claim_decision("n1", "cp-c", T0 + 2)
    assert not storage.claim_decision("nope", "cp-a", T0 + 2)
    claimed = storage.decision("n1")
    assert claimed is not None
    assert (claimed.delivered_at, claimed.delivered_by) == (T0 + 1, "cp-a")
    assert storage.undelivered_decisions(T0 + 2) == []


def test_only_the_claimer_gives_a_decision_back(storage: Storage) -> None:
    storage.queue_decision(record("n1"))
    assert not storage.unclaim_decision("n1", "cp-a")  # nothing claimed yet
    assert storage.claim_decision("n1", "cp-a", T0 + 1)
    assert not storage.unclaim_decision("n1", "cp-c")
    assert storage.unclaim_decision("n1", "cp-a")  # its stream closed: the next replica may
    assert storage.undelivered_decisions(T0 + 2) == [record("n1")]
    assert storage.claim_decision("n1", "cp-c", T0 + 3)
    assert not storage.unclaim_decision("n1", "cp-a")  # a's late give-back undoes nothing
    claimed = storage.decision("n1")
    assert claimed is not None and claimed.delivered_by == "cp-c"


def test_an_expired_decision_is_never_claimed_and_is_purged(storage: Storage) -> None:
    storage.queue_decision(record("old", at=T0, ttl=60.0))
    storage.queue_decision(record("sent", host="h2", at=T0, ttl=60.0))
    storage.queue_decision(record("new", at=T0 + 30, ttl=60.0))
    assert storage.claim_decision("sent", "cp-a", T0 + 10)
    assert [d.nonce for d in storage.undelivered_decisions(T0 + 10)] == ["old", "new"]
    assert [d.nonce for d in storage.undelivered_decisions(T0 + 60)] == ["new"]  # at expiry
    assert not storage.claim_decision("old", "cp-a", T0 + 60)
    assert storage.purge_decisions(T0 + 59) == 0
    assert storage.purge_decisions(T0 + 60) == 2  # delivered or not
    assert storage.decision("old") is None and storage.decision("sent") is None
    assert storage.decision("new") is not None
    assert storage.purge_decisions(T0 + 60) == 0


@contextmanager
def two_stores(backend: str, tmp_path: Path) -> Iterator[tuple[Storage, Storage]]:
    """Two storages on one database, as two replicas have (separate connections)."""
    if backend == "sqlite":
        stores: tuple[Storage, Storage] = (
            SqliteStorage(tmp_path / "cp.db"),
            SqliteStorage(tmp_path / "cp.db"),
        )
        try:
            yield stores
        finally:
            for s in stores:
                s.close()
        return
    with fresh_schema() as url:
        stores = (PostgresStorage(url), PostgresStorage(url))
        try:
            yield stores
        finally:
            for s in stores:
                s.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_replicas_claiming_at_once_send_each_decision_once(backend: str, tmp_path: Path) -> None:
    nonces = [f"n{i:03d}" for i in range(60)]
    with two_stores(backend, tmp_path) as (a, b):
        for nonce in nonces:
            a.queue_decision(record(nonce, host=f"h{nonce}"))
        won: dict[str, list[str]] = {"cp-a": [], "cp-b": []}
        start = threading.Barrier(2, timeout=30)

        def claimer(store: Storage, name: str) -> Callable[[], None]:
            def run() -> None:
                start.wait()
                for nonce in nonces:
                    if store.claim_decision(nonce, name, T0 + 1):
                        won[name].append(nonce)

            return run

        threads = [threading.Thread(target=claimer(s, n)) for s, n in ((a, "cp-a"), (b, "cp-b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
            assert not t.is_alive(), "a claimer did not finish within 60s"
        assert sorted(won["cp-a"] + won["cp-b"]) == nonces  # each once, none lost
        for name, claimed in won.items():
            for nonce in claimed:
                stored = b.decision(nonce)
                assert stored is not None and stored.delivered_by == name


@contextmanager
def at_v3(backend: str, tmp_path: Path) -> Iterator[Storage]:
    """A v3 database with one agent; yields this code's storage opened on it (upgraded)."""
    if backend == "sqlite":
        path = tmp_path / "cp.db"
        SqliteStorage(path, BEFORE_V4).close()
        with sqlite3.connect(path) as raw:
            raw.execute("INSERT INTO agents (host_id, labels, replica) VALUES ('h1', '{}', 'a')")
        raw.close()
        storage: Storage = SqliteStorage(path)
        try:
            yield storage
        finally:
            storage.close()
        return
    with fresh_schema() as url:
        PostgresStorage(url, BEFORE_V4).close()
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO agents (host_id, labels, replica) VALUES ('h1', '{}', 'a')")
        storage = PostgresStorage(url)
        try:
            yield storage
        finally:
            storage.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_v3_database_gains_the_decisions_table_in_place(backend: str, tmp_path: Path) -> None:
    with at_v3(backend, tmp_path) as storage:
        assert storage.schema_version() == len(MIGRATIONS)  # v4 and any later ones
        agent = storage.agent("h1")
        assert agent is not None and agent.replica == "a"
        storage.queue_decision(record("n1"))
        assert storage.claim_decision("n1", "a", T0 + 1)
