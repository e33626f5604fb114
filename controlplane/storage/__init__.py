"""Control-plane storage: the ``Storage`` Protocol (``base``) and its two implementations.

- ``base``      records and the Protocol every backend implements (with ``base_auth``,
                ``base_pki`` and ``base_decisions`` for the security and approval tables)
- ``schema``    versioned migrations, written once in SQLite's dialect
- ``rows``      rows <-> records
- ``sqlite``    ``SqliteStorage``: one file, WAL, synchronous=FULL (a lab, a small fleet)
- ``dialect``   the same migrations as PostgreSQL DDL
- ``postgres``  ``PostgresStorage``: a pool on one PostgreSQL shared by several replicas
- ``runner``    ``StorageThread``: the single thread the asyncio server runs storage calls on
"""

from __future__ import annotations

from controlplane.storage.base import Storage
from controlplane.storage.sqlite import SqliteStorage

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_storage(target: str) -> Storage:
    """The backend for ``--db``: a ``postgresql://`` URL opens PostgreSQL, anything else is a
    SQLite file (created on first start)."""
    if target.startswith(POSTGRES_SCHEMES):
        from controlplane.storage.postgres import PostgresStorage  # psycopg only when asked for

        return PostgresStorage(target)
    return SqliteStorage(target)


__all__ = ["SqliteStorage", "Storage", "open_storage"]
