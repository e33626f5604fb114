"""``SqliteDb``: the connection, its pragmas and transactions, under the storage classes.

One connection behind one lock: the server drives it from a single storage thread anyway, and
tests call it directly. Every public method of the classes built on it is one transaction.
Durability comes from ``synchronous=FULL`` in WAL mode.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controlplane.storage.schema import MIGRATIONS, migrate, schema_version


class SqliteDb:
    def __init__(self, path: str | Path, migrations: Sequence[str] = MIGRATIONS) -> None:
        """``migrations`` is injectable so a test can exercise an upgrade of a real file."""
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
        migrate(self._db, self.path, migrations)

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
