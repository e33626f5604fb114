"""Control-plane storage: the ``Storage`` Protocol (``base``) and its SQLite implementation.

- ``base``     records and the Protocol every backend implements
- ``schema``   versioned SQLite migrations, backed up before an upgrade
- ``rows``     SQLite rows <-> records
- ``sqlite``   ``SqliteStorage``: one file, WAL, synchronous=FULL
- ``runner``   ``StorageThread``: the single thread the asyncio server runs storage calls on
"""

from __future__ import annotations

from controlplane.storage.base import Storage
from controlplane.storage.sqlite import SqliteStorage


def open_storage(path: str) -> Storage:
    """The backend for ``--db``: a SQLite file today; a ``postgresql://`` URL later."""
    return SqliteStorage(path)


__all__ = ["SqliteStorage", "Storage", "open_storage"]
