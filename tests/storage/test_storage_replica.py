"""Which replica holds each agent's stream, on both backends: a replica that starts or stops
marks only its own agents disconnected, a stream that moved to another replica is not ended by
the old replica's late teardown, and a database from before the ``replica`` column (schema v2)
is upgraded in place with its agents claimed by no replica."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from pg_schema import fresh_schema

from controlplane.storage.base import AgentRecord, Storage
from controlplane.storage.postgres import PostgresStorage
from controlplane.storage.schema import MIGRATIONS
from controlplane.storage.sqlite import SqliteStorage

BEFORE_V3 = MIGRATIONS[:2]


def connected(storage: Storage) -> dict[str, bool]:
    return {a.host_id: a.connected for a in storage.agents()}


def test_a_replica_disconnects_only_the_agents_streaming_to_it(storage: Storage) -> None:
    for host, replica in (("a1", "cp-a"), ("a2", "cp-a"), ("b1", "cp-b"), ("old", "")):
        storage.upsert_agent(AgentRecord(host, {}, last_seen=1.0, connected=True, replica=replica))
    assert storage.agent("b1") == AgentRecord(
        "b1", {}, last_seen=1.0, connected=True, replica="cp-b"
    )
    storage.disconnect_all("cp-a")  # cp-a starts again (or stops): b1 still streams to cp-b
    assert connected(storage) == {"a1": False, "a2": False, "b1": True, "old": False}
    storage.disconnect_all("cp-c")  # a replica with no agents changes nothing
    assert connected(storage) == {"a1": False, "a2": False, "b1": True, "old": False}


def test_a_stream_that_moved_is_not_ended_by_the_old_replica(storage: Storage) -> None:
    storage.upsert_agent(AgentRecord("h1", {}, last_seen=1.0, connected=True, replica="cp-a"))
    storage.set_connected("h1", True, 2.0, "cp-b")  # reconnected to cp-b before cp-a noticed
    storage.set_connected("h1", False, 3.0, "cp-a")  # cp-a's teardown of the old stream
    moved = storage.agent("h1")
    assert moved is not None and moved.connected and moved.replica == "cp-b"
    assert moved.last_seen == 2.0
    storage.set_connected("h1", False, 4.0, "cp-b")
    gone = storage.agent("h1")
    assert gone is not None and not gone.connected and gone.last_seen == 4.0


@contextmanager
def at_v2(backend: str, tmp_path: Path) -> Iterator[Storage]:
    """A v2 database holding one connected agent, written with v2's columns; yields the open
    this code opened on it (upgraded)."""
    if backend == "sqlite":
        path = tmp_path / "cp.db"
        SqliteStorage(path, BEFORE_V3).close()
        with sqlite3.connect(path) as raw:
            raw.execute("INSERT INTO agents (host_id, labels, connected) VALUES ('h1', '{}', 1)")
        raw.close()
        yield SqliteStorage(path)
        return
    with fresh_schema() as url:
        PostgresStorage(url, BEFORE_V3).close()
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO agents (host_id, labels, connected) VALUES ('h1', '{}', 1)")
        yield PostgresStorage(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_v2_database_gains_the_replica_column_in_place(backend: str, tmp_path: Path) -> None:
    with at_v2(backend, tmp_path) as storage:
        try:
            assert storage.schema_version() == len(MIGRATIONS)
            old = storage.agent("h1")
            assert old is not None and old.connected and old.replica == ""
            storage.disconnect_all("cp-a")  # a row no replica claims is any starting replica's
            assert connected(storage) == {"h1": False}
        finally:
            storage.close()
