"""``AuthStorage`` and ``PkiStorage`` in PostgreSQL: API tokens, the hash-chained audit log,
enrollment tokens, issued certificates and revoked hosts (ports of ``sqlite_auth`` and
``sqlite_pki``, same tables and semantics).

What SQLite got from its single writer, PostgreSQL gets from explicit locks, since several
replicas write at once:

- an audit append takes a transaction-scoped advisory lock before it reads the last entry, so
  two replicas never chain two entries to the same parent (the chain would no longer verify);
- consuming an enrollment token locks its row (``FOR UPDATE``): of two replicas presenting one
  token, the second sees it used. It also locks the host id, so two unbound tokens cannot both
  enroll one host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.rows import DictRow

from controlplane.storage.base_auth import (
    GENESIS,
    ApiTokenRecord,
    AuditDraft,
    AuditEntry,
    AuditQuery,
    RoleChange,
    chained,
)
from controlplane.storage.base_pki import (
    OPERATOR_SUBJECT,
    CertificateRecord,
    EnrollmentTokenRecord,
    RevokedHost,
    RevokedOperators,
    TokenCheck,
    certificate_record,
    operator_subject,
    revoked_host_record,
    token_verdict,
)
from controlplane.storage.postgres_db import Conn, PostgresDb

TOKEN_COLUMNS = (
    "id, name, role, secret_hash, created_at, expires_at, revoked_at, created_by, last_used_at"
)
AUDIT_COLUMNS = "seq, at, actor, role, via, action, target, source, result, detail, prev_hash, hash"
AUDIT_LOCK = 0x57A2C4_0002
"""``pg_advisory_xact_lock`` key serialising audit appends across replicas."""
ENROLL_LOCK = 0x57A2C5
"""First key of the per-host advisory lock taken while consuming an enrollment token."""


def _values(columns: str, row: DictRow) -> list[Any]:
    return [row[c] for c in columns.split(", ")]


def _placeholders(columns: str) -> str:
    return ", ".join(["%s"] * len(columns.split(", ")))


class PgSecurityTables(PostgresDb):
    # ---- API tokens --------------------------------------------------------------------------

    def put_api_token(self, token: ApiTokenRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES ({_placeholders(TOKEN_COLUMNS)})",
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
        found = self._query(f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = %s", (token_id,))
        return ApiTokenRecord(*_values(TOKEN_COLUMNS, found[0])) if found else None

    def api_tokens(self) -> list[ApiTokenRecord]:
        sql = f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
        return [ApiTokenRecord(*_values(TOKEN_COLUMNS, r)) for r in self._query(sql)]

    def any_api_token(self) -> bool:
        return bool(self._query("SELECT 1 AS one FROM api_tokens LIMIT 1"))

    def revoke_api_token(self, token_id: str, at: float) -> ApiTokenRecord | None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE api_tokens SET revoked_at = %s WHERE id = %s AND revoked_at = 0",
                (at, token_id),
            )
            found = conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = %s", (token_id,)
            ).fetchone()
        return ApiTokenRecord(*_values(TOKEN_COLUMNS, found)) if found else None

    def touch_api_token(self, token_id: str, at: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE api_tokens SET last_used_at = GREATEST(last_used_at, %s) WHERE id = %s",
                (at, token_id),
            )

    def set_api_token_role(self, token_id: str, role: str) -> RoleChange | None:
        with self._tx() as conn:
            found = conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = %s FOR UPDATE", (token_id,)
            ).fetchone()
            if found is None:
                return None
            after = conn.execute(
                f"UPDATE api_tokens SET role = %s WHERE id = %s RETURNING {TOKEN_COLUMNS}",
                (role, token_id),
            ).fetchone()
        assert after is not None  # the row is locked: it cannot have gone since the SELECT
        return RoleChange(str(found["role"]), ApiTokenRecord(*_values(TOKEN_COLUMNS, after)))

    # ---- audit log ---------------------------------------------------------------------------

    def append_audit(self, draft: AuditDraft) -> AuditEntry:
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
            last = conn.execute(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev = (int(last["seq"]) + 1, str(last["hash"])) if last else (1, GENESIS)
            entry = chained(seq, draft, prev)
            conn.execute(
                f"INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES ({_placeholders(AUDIT_COLUMNS)})",
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
        clauses = ["at >= %s"]
        args: list[Any] = [query.since]
        for column, value in (("actor", query.actor), ("action", query.action)):
            if value:
                clauses.append(f"{column} = %s")
                args.append(value)
        sql = (
            f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(clauses)} "
            "ORDER BY seq DESC LIMIT %s"
        )
        found = self._query(sql, [*args, query.limit])
        return [AuditEntry(*_values(AUDIT_COLUMNS, r)) for r in reversed(found)]

    def audit_range(self, after_seq: int, limit: int) -> Sequence[AuditEntry]:
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > %s ORDER BY seq LIMIT %s"
        return [
            AuditEntry(*_values(AUDIT_COLUMNS, r)) for r in self._query(sql, (after_seq, limit))
        ]

    # ---- enrollment tokens, certificates, revoked hosts --------------------------------------

    def add_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO enrollment_tokens (id, secret_hash, host_id, created_at, expires_at,"
                " used_at, used_by, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    token.id,
                    token.secret_hash,
                    token.host_id,
                    token.created_at,
                    token.expires_at,
                    token.used_at,
                    token.used_by,
                    token.created_by,
                ),
            )

    def consume_enrollment_token(
        self, token_id: str, secret_hash: str, host_id: str, now: float
    ) -> TokenCheck:
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (ENROLL_LOCK, host_id))
            row = conn.execute(
                "SELECT * FROM enrollment_tokens WHERE id = %s FOR UPDATE", (token_id,)
            ).fetchone()
            verdict = token_verdict(
                row, secret_hash, host_id, now, lambda: _enrolled(conn, host_id, now)
            )
            if verdict != "ok":
                return verdict
            conn.execute(
                "UPDATE enrollment_tokens SET used_at = %s, used_by = %s"
                " WHERE id = %s AND used_at = 0",
                (now, host_id, token_id),
            )
            return "ok"

    def add_certificate(self, cert: CertificateRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO certificates (serial, host_id, not_before, not_after, issued_at,"
                " revoked_at, reason) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    cert.serial,
                    cert.host_id,
                    cert.not_before,
                    cert.not_after,
                    cert.issued_at,
                    cert.revoked_at,
                    cert.reason,
                ),
            )

    def certificates(self, host_id: str = "") -> list[CertificateRecord]:
        if host_id:
            found = self._query(
                "SELECT * FROM certificates WHERE host_id = %s ORDER BY issued_at DESC", (host_id,)
            )
        else:
            found = self._query("SELECT * FROM certificates ORDER BY issued_at DESC")
        return [certificate_record(r) for r in found]

    def certificate(self, serial: str) -> CertificateRecord | None:
        found = self._query("SELECT * FROM certificates WHERE serial = %s", (serial,))
        return certificate_record(found[0]) if found else None

    def revoke_host(self, host_id: str, at: float, by: str, reason: str) -> int:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO revoked_hosts (host_id, at, revoked_by, reason)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (host_id) DO NOTHING",
                (host_id, at, by, reason),
            )
            changed = conn.execute(
                "UPDATE certificates SET revoked_at = %s, reason = %s"
                " WHERE host_id = %s AND revoked_at = 0",
                (at, reason, host_id),
            )
            return max(changed.rowcount, 0)

    def revoked_certificates_since(self, since: float) -> list[CertificateRecord]:
        # "revoked_at > 0" repeats the partial index's predicate so the planner may use it
        found = self._query(
            "SELECT * FROM certificates WHERE revoked_at > 0 AND revoked_at >= %s"
            " AND host_id NOT LIKE %s ORDER BY revoked_at, serial",
            (since, OPERATOR_SUBJECT + "%"),
        )
        return [certificate_record(r) for r in found]

    def revoked_host(self, host_id: str) -> RevokedHost | None:
        found = self._query("SELECT * FROM revoked_hosts WHERE host_id = %s", (host_id,))
        return revoked_host_record(found[0]) if found else None

    def revoked_hosts(self) -> list[RevokedHost]:
        found = self._query("SELECT * FROM revoked_hosts ORDER BY at")
        return [revoked_host_record(r) for r in found]

    def revoke_certificate(self, serial: str, subject: str, at: float, reason: str) -> bool:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO certificates (serial, host_id, not_before, not_after, issued_at)"
                " VALUES (%s, %s, 0, 0, 0) ON CONFLICT (serial) DO NOTHING",
                (serial, subject),
            )
            changed = conn.execute(
                "UPDATE certificates SET revoked_at = %s, reason = %s WHERE serial = %s"
                " AND revoked_at = 0",
                (at, reason, serial),
            )
            return changed.rowcount > 0

    def revoke_operator(self, name: str, at: float, by: str, reason: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO revoked_hosts (host_id, at, revoked_by, reason)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (host_id) DO UPDATE SET"
                " at = GREATEST(revoked_hosts.at, excluded.at),"
                " revoked_by = excluded.revoked_by, reason = excluded.reason",
                (operator_subject(name), at, by, reason),
            )

    def revoked_operators(self) -> RevokedOperators:
        like = (OPERATOR_SUBJECT + "%",)
        serials = self._query(
            "SELECT serial FROM certificates WHERE host_id LIKE %s AND revoked_at > 0", like
        )
        names = self._query("SELECT host_id, at FROM revoked_hosts WHERE host_id LIKE %s", like)
        return RevokedOperators(
            frozenset(str(r["serial"]) for r in serials),
            {str(r["host_id"])[len(OPERATOR_SUBJECT) :]: float(r["at"]) for r in names},
        )

    def unrevoke_host(self, host_id: str) -> bool:
        with self._tx() as conn:
            gone = conn.execute("DELETE FROM revoked_hosts WHERE host_id = %s", (host_id,))
            return gone.rowcount > 0


def _enrolled(conn: Conn, host_id: str, now: float) -> bool:
    live = conn.execute(
        "SELECT 1 AS one FROM certificates WHERE host_id = %s AND revoked_at = 0 "
        "AND not_after > %s LIMIT 1",
        (host_id, now),
    ).fetchone()
    return live is not None
