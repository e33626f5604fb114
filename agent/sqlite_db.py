"""One SQLite file behind one connection and one lock, with versioned migrations.

Shared by the agent's journal and the control plane's SQLite storage (the control plane may
import the agent, never the reverse). WAL mode with ``synchronous=FULL``: a committed
transaction survives a crash or power loss, which the intent-before-action rule depends on.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class SqliteDb:
    def __init__(self, path: str | Path, cache_kib: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        if cache_kib is not None:
            self._db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def schema_version(self) -> int:
        with self._lock:
            return schema_version(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(
    db: sqlite3.Connection,
    migrations: Sequence[str],
    backup_path: Callable[[int], Path],
    too_new: Callable[[int], Exception],
) -> None:
    """Apply pending migrations, each in its own IMMEDIATE transaction that re-reads the version
    under the write lock, so two processes opening one new file never apply a step twice.

    Before upgrading an existing file, copy it to ``backup_path(current_version)`` with SQLite's
    backup API (a plain file copy would miss commits still in the WAL after a crash). A file
    newer than the code raises ``too_new(version)``: never downgrade someone's state."""
    current = schema_version(db)
    if current > len(migrations):
        raise too_new(current)
    if current == len(migrations):
        return
    if current > 0:
        backup = sqlite3.connect(str(backup_path(current)))
        with backup:
            db.backup(backup)
        backup.close()
    for version in range(current, len(migrations)):
        db.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(db) == version:
                for statement in migrations[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
