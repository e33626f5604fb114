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

# What a file's problem is, and what the operator should do about it, by SQLite result code.
_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_TEMPORARY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL)


class DatabaseFileError(OSError):
    """A SQLite file that cannot be used: corrupt or not a database, locked by another process
    past the busy timeout, on a full disk, unreadable or read-only. Raised when the file is
    opened (the pragmas, a write-lock probe, the migrations), so a process fails at start with
    the file's path and what to do, not with a traceback from its first write.

    An ``OSError``: callers that already report "cannot open/bind X" errors cleanly report this
    one too. ``exit_code`` separates what waiting may cure (75, EX_TEMPFAIL: locked, full) from
    what it never will (65, EX_DATAERR: corrupt), so a service manager can stop restarting."""

    def __init__(self, path: Path, problem: str, hint: str, exit_code: int) -> None:
        super().__init__(f"{path}: {problem}; {hint}")
        self.path = path
        self.problem = problem
        self.hint = hint
        self.exit_code = exit_code


def file_error(path: Path, exc: sqlite3.Error) -> DatabaseFileError:
    code = getattr(exc, "sqlite_errorcode", None)
    code = None if code is None else code & 0xFF  # extended codes carry the primary in bits 0-7
    if code in _CORRUPT:
        return DatabaseFileError(
            path,
            f"the file is corrupt or not a SQLite database ({exc})",
            f"stop the process, move it aside (mv {path} {path}.corrupt) and start again with a "
            "new empty file, or restore it from a backup",
            65,
        )
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return DatabaseFileError(
            path,
            f"locked by another process for longer than {BUSY_TIMEOUT_S:g}s ({exc})",
            f"find the holder with `fuser -v {path}` (a second process on the same state "
            "directory?) and stop it; this process starts once the lock is released",
            75,
        )
    if code == sqlite3.SQLITE_FULL:
        return DatabaseFileError(
            path, f"the disk is full ({exc})", f"free space on the filesystem of {path.parent}", 75
        )
    return DatabaseFileError(
        path,
        f"cannot be opened or written ({exc})",
        f"check that {path} and its directory exist, are writable by this user and the disk "
        "is healthy",
        75,
    )


def is_transient(exc: BaseException) -> bool:
    """A write that failed because the disk is full or another process holds the lock: the
    state is intact and a later write may succeed (see ``Agent.run``'s degraded mode)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF) in _TEMPORARY
    )


BUSY_TIMEOUT_S = 10.0


class SqliteDb:
    def __init__(self, path: str | Path, cache_kib: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                isolation_level=None,
            )  # fmt: skip
        except sqlite3.Error as exc:
            raise file_error(self.path, exc) from None
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            if cache_kib is not None:
                self._db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            # Probe the write lock now (waits up to the busy timeout): a file another process
            # holds fails here, clearly, rather than at the first write of a running service.
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            self._db.close()
            raise file_error(self.path, exc) from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                # A COMMIT that fails (disk full, lock timeout) may leave the transaction
                # open; end it, or every later BEGIN fails "within a transaction".
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

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
    newer than the code raises ``too_new(version)``: never downgrade someone's state.
    A file SQLite cannot read or write raises :class:`DatabaseFileError`."""
    try:
        _migrate(db, migrations, backup_path, too_new)
    except sqlite3.Error as exc:
        name = next((row[2] for row in _databases(db) if row[1] == "main"), "")
        raise file_error(Path(name or "<memory>"), exc) from None


def _databases(db: sqlite3.Connection) -> list[Any]:
    try:
        return list(db.execute("PRAGMA database_list").fetchall())
    except sqlite3.Error:
        return []


def _migrate(
    db: sqlite3.Connection,
    migrations: Sequence[str],
    backup_path: Callable[[int], Path],
    too_new: Callable[[int], Exception],
) -> None:
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
