"""The console's read-only storage reader (``controlplane.storage.reader``) on real SQLite and
real PostgreSQL: it sees what the writer committed, a write through it is refused by the
database, and on SQLite it reads while another connection holds the write lock (what a page
load used to wait behind)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from controlplane.storage.base import AgentRecord
from controlplane.storage.reader import SqliteReader, open_reader
from controlplane.storage.sqlite import SqliteStorage

PG_URL = os.environ.get("STANCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def agent(host: str, **labels: str) -> AgentRecord:
    return AgentRecord(host_id=host, labels=labels, last_seen=time.time(), connected=True)


def test_sqlite_reader_sees_commits_and_refuses_writes(tmp_path: Path) -> None:
    writer = SqliteStorage(tmp_path / "cp.db")
    reader = open_reader(writer)
    assert reader is not None and isinstance(reader.storage, SqliteReader)
    try:
        writer.upsert_agent(agent("web-1", role="web"))
        assert [a.host_id for a in reader.storage.agents()] == ["web-1"]
        writer.upsert_agent(agent("web-2", role="web"))
        assert [a.host_id for a in reader.storage.agents()] == ["web-1", "web-2"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.storage.upsert_agent(agent("sneaky"))
        assert [a.host_id for a in writer.agents()] == ["web-1", "web-2"]
    finally:
        reader.close()
        writer.close()


def test_sqlite_reader_reads_while_the_write_lock_is_held(tmp_path: Path) -> None:
    """A write transaction held open (as a long presence flush holds it) does not delay the
    reader, which sees the last commit; the writer's own thread would queue behind it."""
    writer = SqliteStorage(tmp_path / "cp.db")
    writer.upsert_agent(agent("web-1"))
    reader = open_reader(writer)
    assert reader is not None
    holder = sqlite3.connect(str(tmp_path / "cp.db"), isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE agents SET agent_version = 'uncommitted'")

        async def read() -> list[AgentRecord]:
            return await asyncio.wait_for(reader.run(reader.storage.agents), 5)

        started = time.monotonic()
        found = asyncio.run(read())
        assert time.monotonic() - started < 2.0
        assert [a.agent_version for a in found] == [""]  # the last commit, not the open write
        holder.execute("COMMIT")
        assert [a.agent_version for a in reader.storage.agents()] == ["uncommitted"]
    finally:
        holder.close()
        reader.close()
        writer.close()


def test_sqlite_reader_runs_on_its_own_thread(tmp_path: Path) -> None:
    writer = SqliteStorage(tmp_path / "cp.db")
    reader = open_reader(writer)
    assert reader is not None
    try:
        name = asyncio.run(reader.run(lambda: threading.current_thread().name))
        assert name.startswith("cp-reads")
    finally:
        reader.close()
        writer.close()


class NotABackend:
    """Any other ``Storage`` (a test's fake): no reader, reads stay on the plane's thread."""


def test_an_unknown_backend_gets_no_reader() -> None:
    assert open_reader(NotABackend()) is None  # type: ignore[arg-type]


@pytest.fixture
def pg_url() -> Iterator[str]:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL unreachable at {PG_URL} (set STANCH_TEST_PG): {exc}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    joiner = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{joiner}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_postgres_reader_is_a_second_read_only_pool(pg_url: str) -> None:
    from controlplane.storage.postgres import PostgresStorage
    from controlplane.storage.postgres_reader import PostgresReader

    writer = PostgresStorage(pg_url)
    reader = open_reader(writer)
    assert reader is not None and isinstance(reader.storage, PostgresReader)
    try:
        writer.upsert_agent(agent("db-1", role="db"))
        assert [a.host_id for a in reader.storage.agents()] == ["db-1"]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.storage.upsert_agent(agent("sneaky"))
        assert [a.host_id for a in writer.agents()] == ["db-1"]
    finally:
        reader.close()
        writer.close()


def test_postgres_reader_refuses_a_schema_it_does_not_read(pg_url: str) -> None:
    from controlplane.storage.postgres_reader import PostgresReader
    from controlplane.storage.schema import SchemaError

    with pytest.raises(SchemaError, match="schema v0"):
        PostgresReader(pg_url, pool_size=1)  # nothing migrated this schema: no writer ran
