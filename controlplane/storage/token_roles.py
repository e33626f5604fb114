"""Changing an API token's role, in SQLite and PostgreSQL (table ``api_tokens``).

One statement pair in one transaction: the old role is read and the new one written together,
so what the audit entry calls "old role" is the role the token really had, even when two admins
change it at once (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT ... FOR UPDATE``).

The role's validity is the caller's business (``controlplane.auth.check_role``); storage only
keeps it. A revoked token keeps its revocation: its role may still be written (the caller
refuses that before asking).

Why a module of its own and not methods on ``AuthTables`` / ``PgSecurityTables``: this file was
added without touching the backends' classes; :func:`set_api_token_role` dispatches on the
backend. Moving the two functions onto those classes (and the signature onto
``base_auth.AuthStorage``) is a mechanical follow-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.storage.base_auth import ApiTokenRecord

TOKEN_COLUMNS = (
    "id, name, role, secret_hash, created_at, expires_at, revoked_at, created_by, last_used_at"
)
_NAMES = TOKEN_COLUMNS.split(", ")


@dataclass(frozen=True)
class RoleChange:
    old_role: str
    token: ApiTokenRecord
    """The token as stored after the change."""


def _record(row: Any) -> ApiTokenRecord:
    """A token from a ``sqlite3.Row`` or a psycopg ``DictRow`` (both index by column name)."""
    return ApiTokenRecord(*(row[name] for name in _NAMES))


def sqlite_set_role(db: Any, token_id: str, role: str) -> RoleChange | None:
    """``db``: a ``controlplane.storage.sqlite_db.SqliteDb``. None when no such token."""
    with db._tx() as conn:
        found = conn.execute(
            f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?", (token_id,)
        ).fetchone()
        if found is None:
            return None
        conn.execute("UPDATE api_tokens SET role = ? WHERE id = ?", (role, token_id))
        after = conn.execute(
            f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?", (token_id,)
        ).fetchone()
    return RoleChange(str(found["role"]), _record(after))


def postgres_set_role(db: Any, token_id: str, role: str) -> RoleChange | None:
    """``db``: a ``controlplane.storage.postgres_db.PostgresDb``. None when no such token."""
    with db._tx() as conn:
        found = conn.execute(
            f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = %s FOR UPDATE", (token_id,)
        ).fetchone()
        if found is None:
            return None
        after = conn.execute(
            f"UPDATE api_tokens SET role = %s WHERE id = %s RETURNING {TOKEN_COLUMNS}",
            (role, token_id),
        ).fetchone()
    return RoleChange(str(found["role"]), _record(after))


def set_api_token_role(db: object, token_id: str, role: str) -> RoleChange | None:
    """Set token ``token_id``'s role on whichever backend ``db`` is; None when no such token.
    Runs on the storage thread (``StorageThread.run``), like every storage call."""
    from controlplane.storage.sqlite_db import SqliteDb

    if isinstance(db, SqliteDb):
        return sqlite_set_role(db, token_id, role)
    try:
        from controlplane.storage.postgres_db import PostgresDb
    except ImportError:  # psycopg not installed: no PostgreSQL backend can exist either
        PostgresDb = None  # type: ignore[assignment,misc]  # noqa: N806 (a class, or None)
    if PostgresDb is not None and isinstance(db, PostgresDb):
        return postgres_set_role(db, token_id, role)
    raise TypeError(f"set_api_token_role: no implementation for {type(db).__name__}")
