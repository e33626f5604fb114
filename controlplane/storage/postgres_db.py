"""``PostgresDb``: the connection pool, transactions and migrations under the PostgreSQL storage.

Why a pool: several control-plane replicas share one database, and each replica calls storage from
its storage thread (``controlplane.storage.runner``) while tests and tools may call it from others;
a pool gives each caller its own connection and replaces one the server dropped (every connection is
checked before it is handed out, so a PostgreSQL restart costs the calls in flight, not the
process). Every public method of the classes built on this is one transaction, committed with
``synchronous_commit`` at the server's default (on): an acknowledged commit is on disk.

Migrations are the SQLite ones (``schema.MIGRATIONS``) read through ``dialect.postgres_ddl``. They
run under a session advisory lock, so replicas started together never apply a step twice; the
version lives in ``stanch_schema``. A database newer than this code is refused.

The URL may pick a schema with libpq's ``options`` (``?options=-csearch_path%3Dstanch``); tests
give each test its own schema that way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from controlplane.storage.dialect import postgres_ddl, statements
from controlplane.storage.schema import MIGRATIONS, SchemaError

MIGRATION_LOCK = 0x57A2C4_0001
"""``pg_advisory_lock`` key held while migrating (any replica of any version takes the same)."""
Conn = psycopg.Connection[DictRow]


def redact(url: str) -> str:
    """``url`` without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def as_row(row: DictRow) -> sqlite3.Row:
    """``rows.*`` read columns by name only, which a dict row answers the same way."""
    return cast(sqlite3.Row, row)


class PostgresDb:
    def __init__(
        self,
        url: str,
        migrations: Sequence[str] = MIGRATIONS,
        *,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        """``migrations`` is injectable so a test can exercise an upgrade of a real database."""
        self.url = url
        _probe(url, connect_timeout)
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            connection_class=psycopg.Connection[DictRow],
            kwargs={"row_factory": dict_row, "autocommit": True},
            min_size=1,
            max_size=pool_size,
            check=ConnectionPool.check_connection,
            configure=self._configure,
            open=False,
            name="stanch-storage",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise SchemaError(
                f"{redact(url)}: no PostgreSQL connection within {connect_timeout:g}s; "
                "check the URL, that the server is up and that it accepts this user"
            ) from exc
        try:
            self._migrate(migrations)
        except BaseException:
            self._pool.close()
            raise

    def _configure(self, conn: Conn) -> None:
        """Run once on each new pooled connection (subclasses add session setup). Connections
        are in autocommit mode: ``_tx`` opens each transaction explicitly."""

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[DictRow]:
        """One read statement (autocommit: no BEGIN/COMMIT round trips)."""
        with self._pool.connection() as conn:
            return conn.execute(sql, args).fetchall()

    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            return _version(conn)

    def close(self) -> None:
        self._pool.close()

    def _migrate(self, migrations: Sequence[str]) -> None:
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            try:
                migrate(conn, migrations, redact(self.url))
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _probe(url: str, timeout: float) -> None:
    """Connect once, so a wrong URL or a server that is down fails now with libpq's reason
    (the pool would retry quietly until its timeout)."""
    try:
        psycopg.connect(url, connect_timeout=max(1, round(timeout))).close()
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SchemaError(
            f"{redact(url)}: cannot connect to PostgreSQL ({reason}); "
            "check the URL, that the server is up and that it accepts this user"
        ) from None


def _version(conn: Conn) -> int:
    present = conn.execute("SELECT to_regclass('stanch_schema') IS NOT NULL AS present").fetchone()
    if present is None or not present["present"]:
        return 0
    row = conn.execute("SELECT version FROM stanch_schema").fetchone()
    return int(row["version"]) if row is not None else 0


def migrate(conn: Conn, migrations: Sequence[str], where: str) -> None:
    """Apply pending migrations, each in its own transaction with its version bump; the caller
    holds the migration lock. A database newer than ``migrations`` raises ``SchemaError``."""
    with conn.transaction():
        conn.execute(
            "CREATE TABLE IF NOT EXISTS stanch_schema (version BIGINT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        if conn.execute("SELECT 1 FROM stanch_schema").fetchone() is None:
            conn.execute("INSERT INTO stanch_schema (version) VALUES (0)")
    current = _version(conn)
    if current > len(migrations):
        raise SchemaError(
            f"{where}: schema v{current} is newer than this control plane "
            f"(v{len(migrations)}); upgrade stanch on every replica, or restore a backup"
        )
    for version in range(current, len(migrations)):
        with conn.transaction():
            for statement in statements(postgres_ddl(migrations[version])):
                conn.execute(statement)
            conn.execute(
                "UPDATE stanch_schema SET version = %s, applied_at = now()", (version + 1,)
            )
