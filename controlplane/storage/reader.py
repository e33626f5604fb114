"""A read-only second storage instance on its own thread, for the web console's pages.

Why: the control plane runs every storage call on one thread (``runner.StorageThread``), in
order. With 10,000 agents that thread is busy with the presence flush (one UPDATE per agent
every few seconds) and the report group commits, and a Fleet page read queued behind them took
a second at p95 while its median was 230 ms. Reads that need no ordering with the writes can
run elsewhere:

- SQLite in WAL mode lets readers run beside the one writer: a second connection to the same
  file, set ``PRAGMA query_only=ON`` (a write through it fails, it does not happen), sees every
  committed transaction and never waits for the writer's lock;
- PostgreSQL: a second, small pool whose sessions default to read-only transactions.

What reads here: the console's pages (``fleet_view`` and the other read-only service functions
they call). What does not: every write, and anything that must read what it has just written in
the same breath (the rollout engine, the approvals wait, token checks, which also touch a
token's last use). A page read after an action still sees the action: the action's commit has
returned before the browser is redirected, and a new read transaction sees every commit.

:func:`open_reader` builds the reader from the writer the control plane already has
(``plane.db``): the same file or the same URL. A backend it does not know (a test's fake)
gets None, and the caller reads through the plane's own thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

from controlplane.storage.base import Storage
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage

log = logging.getLogger("stanch.cp.storage")
THREAD_NAME = "cp-reads"
PG_READER_POOL = 2
"""Connections of the reader's PostgreSQL pool: one for its thread, one spare while a dropped
connection is replaced."""


class SqliteReader(SqliteStorage):
    """``SqliteStorage`` on its own connection with ``query_only`` on. Opened after the writer,
    which brought the file to this code's schema: opening finds nothing to migrate (and, like
    any opening, probes the write lock once, which waits at most for one transaction)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._query("PRAGMA query_only=ON")


def open_reader(storage: Storage) -> StorageThread | None:
    """A read-only sibling of ``storage`` on its own thread; None for a backend it cannot
    open a second time (read through the plane's own thread then). Blocking (it connects):
    call it off the event loop."""
    if isinstance(storage, SqliteStorage):
        return StorageThread(SqliteReader(storage.path), THREAD_NAME)
    try:
        from controlplane.storage.postgres import PostgresStorage
    except ImportError:  # psycopg not installed: then it cannot be PostgreSQL either
        return None
    if isinstance(storage, PostgresStorage):
        from controlplane.storage.postgres_reader import PostgresReader

        return StorageThread(PostgresReader(storage.url, pool_size=PG_READER_POOL), THREAD_NAME)
    log.info("no read-only reader for %s: reads share the storage thread", type(storage).__name__)
    return None
