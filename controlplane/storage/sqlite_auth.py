"""``AuthStorage`` in SQLite: API tokens and the audit log.

Appends to the audit log are serialised by SQLite itself: ``BEGIN IMMEDIATE`` takes the write
lock before the previous hash is read, so two appends (even from two processes on one file, such
as ``stanch-cp tokens create`` next to a running server) can never chain to the same parent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from controlplane.storage.base_auth import (
    GENESIS,
    ApiTokenRecord,
    AuditDraft,
    AuditEntry,
    AuditQuery,
    RoleChange,
    chained,
)
from controlplane.storage.sqlite_db import SqliteDb

TOKEN_COLUMNS = (
    "id, name, role, secret_hash, created_at, expires_at, revoked_at, created_by, last_used_at"
)
AUDIT_COLUMNS = "seq, at, actor, role, via, action, target, source, result, detail, prev_hash, hash"


def _token(row: sqlite3.Row) -> ApiTokenRecord:
    return ApiTokenRecord(*(row[i] for i in range(9)))


def _entry(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(*(row[i] for i in range(12)))


class AuthTables(SqliteDb):
    # ---- API tokens --------------------------------------------------------------------------

    def put_api_token(self, token: ApiTokenRecord) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    token.id,
                    token.name,
                    token.role,
                    token.secret_hash,
                    token.created_at,
                    token.expires_at,
                    token.revoked_at,
                    token.created_by,
                    token.last_used_at,
                ),
            )

    def api_token(self, token_id: str) -> ApiTokenRecord | None:
        found = self._query(f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?", (token_id,))
        return _token(found[0]) if found else None

    def api_tokens(self) -> list[ApiTokenRecord]:
        sql = f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
        return [_token(r) for r in self._query(sql)]

    def any_api_token(self) -> bool:
        return bool(self._query("SELECT 1 FROM api_tokens LIMIT 1"))

    def revoke_api_token(self, token_id: str, at: float) -> ApiTokenRecord | None:
        with self._tx() as db:
            db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at = 0",
                (at, token_id),
            )
            found = db.execute(
                f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?", (token_id,)
            ).fetchall()
        return _token(found[0]) if found else None

    def touch_api_token(self, token_id: str, at: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE api_tokens SET last_used_at = MAX(last_used_at, ?) WHERE id = ?",
                (at, token_id),
            )

    def set_api_token_role(self, token_id: str, role: str) -> RoleChange | None:
        with self._tx() as db:
            found = db.execute(
                f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?", (token_id,)
            ).fetchone()
            if found is None:
                return None
            db.execute("UPDATE api_tokens SET role = ? WHERE id = ?", (role, token_id))
            after = db.execute(
                f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?", (token_id,)
            ).fetchone()
        return RoleChange(str(found["role"]), _token(after))

    # ---- audit log ---------------------------------------------------------------------------

    def append_audit(self, draft: AuditDraft) -> AuditEntry:
        with self._tx() as db:
            last = db.execute(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            entry = chained(seq, draft, prev)
            db.execute(
                f"INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    entry.seq,
                    entry.at,
                    entry.actor,
                    entry.role,
                    entry.via,
                    entry.action,
                    entry.target,
                    entry.source,
                    entry.result,
                    entry.detail,
                    entry.prev_hash,
                    entry.hash,
                ),
            )
        return entry

    def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        clauses = ["at >= ?"]
        args: list[Any] = [query.since]
        for column, value in (("actor", query.actor), ("action", query.action)):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        sql = (
            f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(clauses)} "
            "ORDER BY seq DESC LIMIT ?"
        )
        return [_entry(r) for r in reversed(self._query(sql, [*args, query.limit]))]

    def audit_range(self, after_seq: int, limit: int) -> Sequence[AuditEntry]:
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?"
        return [_entry(r) for r in self._query(sql, (after_seq, limit))]
