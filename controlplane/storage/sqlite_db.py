"""``SqliteDb``: the connection, its pragmas and transactions, under the storage classes.

One connection behind one lock: the server drives it from a single storage thread anyway, and
tests call it directly. Every public method of the classes built on it is one transaction.
Durability comes from ``synchronous=FULL`` in WAL mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.sqlite_db import SqliteDb as AgentSqliteDb
from controlplane.storage.schema import MIGRATIONS, migrate


class SqliteDb(AgentSqliteDb):
    def __init__(self, path: str | Path, migrations: Sequence[str] = MIGRATIONS) -> None:
        """``migrations`` is injectable so a test can exercise an upgrade of a real file."""
        super().__init__(path)
        migrate(self._db, self.path, migrations)
