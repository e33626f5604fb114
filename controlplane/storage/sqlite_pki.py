"""``PkiStorage`` in SQLite: enrollment tokens, issued certificates, revoked hosts."""

from __future__ import annotations

import sqlite3

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
from controlplane.storage.sqlite_db import SqliteDb


class PkiTables(SqliteDb):
    def add_enrollment_token(self, token: EnrollmentTokenRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO enrollment_tokens (id, secret_hash, host_id, created_at, expires_at,"
                " used_at, used_by, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        with self._tx() as db:
            row = db.execute("SELECT * FROM enrollment_tokens WHERE id = ?", (token_id,)).fetchone()
            verdict = token_verdict(
                row, secret_hash, host_id, now, lambda: _enrolled(db, host_id, now)
            )
            if verdict != "ok":
                return verdict
            db.execute(
                "UPDATE enrollment_tokens SET used_at = ?, used_by = ?"
                " WHERE id = ? AND used_at = 0",
                (now, host_id, token_id),
            )
            return "ok"

    def add_certificate(self, cert: CertificateRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO certificates (serial, host_id, not_before, not_after, issued_at,"
                " revoked_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
                "SELECT * FROM certificates WHERE host_id = ? ORDER BY issued_at DESC", (host_id,)
            )
        else:
            found = self._query("SELECT * FROM certificates ORDER BY issued_at DESC")
        return [certificate_record(r) for r in found]

    def certificate(self, serial: str) -> CertificateRecord | None:
        found = self._query("SELECT * FROM certificates WHERE serial = ?", (serial,))
        return certificate_record(found[0]) if found else None

    def revoke_host(self, host_id: str, at: float, by: str, reason: str) -> int:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO revoked_hosts (host_id, at, revoked_by, reason)"
                " VALUES (?, ?, ?, ?)",
                (host_id, at, by, reason),
            )
            changed = db.execute(
                "UPDATE certificates SET revoked_at = ?, reason = ?"
                " WHERE host_id = ? AND revoked_at = 0",
                (at, reason, host_id),
            )
            return int(changed.rowcount)

    def revoked_certificates_since(self, since: float) -> list[CertificateRecord]:
        # "revoked_at > 0" repeats the partial index's predicate so the planner may use it
        found = self._query(
            "SELECT * FROM certificates WHERE revoked_at > 0 AND revoked_at >= ?"
            " AND host_id NOT LIKE ? ORDER BY revoked_at, serial",
            (since, OPERATOR_SUBJECT + "%"),
        )
        return [certificate_record(r) for r in found]

    def revoked_host(self, host_id: str) -> RevokedHost | None:
        found = self._query("SELECT * FROM revoked_hosts WHERE host_id = ?", (host_id,))
        return revoked_host_record(found[0]) if found else None

    def revoked_hosts(self) -> list[RevokedHost]:
        found = self._query("SELECT * FROM revoked_hosts ORDER BY at")
        return [revoked_host_record(r) for r in found]

    def revoke_certificate(self, serial: str, subject: str, at: float, reason: str) -> bool:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO certificates (serial, host_id, not_before, not_after,"
                " issued_at) VALUES (?, ?, 0, 0, 0)",
                (serial, subject),
            )
            changed = db.execute(
                "UPDATE certificates SET revoked_at = ?, reason = ? WHERE serial = ?"
                " AND revoked_at = 0",
                (at, reason, serial),
            )
            return int(changed.rowcount) > 0

    def revoke_operator(self, name: str, at: float, by: str, reason: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO revoked_hosts (host_id, at, revoked_by, reason) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (host_id) DO UPDATE SET at = MAX(at, excluded.at),"
                " revoked_by = excluded.revoked_by, reason = excluded.reason",
                (operator_subject(name), at, by, reason),
            )

    def revoked_operators(self) -> RevokedOperators:
        like = (OPERATOR_SUBJECT + "%",)
        serials = self._query(
            "SELECT serial FROM certificates WHERE host_id LIKE ? AND revoked_at > 0", like
        )
        names = self._query("SELECT host_id, at FROM revoked_hosts WHERE host_id LIKE ?", like)
        return RevokedOperators(
            frozenset(str(r["serial"]) for r in serials),
            {str(r["host_id"])[len(OPERATOR_SUBJECT) :]: float(r["at"]) for r in names},
        )

    def unrevoke_host(self, host_id: str) -> bool:
        with self._tx() as db:
            gone = db.execute("DELETE FROM revoked_hosts WHERE host_id = ?", (host_id,))
            return int(gone.rowcount) > 0


def _enrolled(db: sqlite3.Connection, host_id: str, now: float) -> bool:
    live = db.execute(
        "SELECT 1 FROM certificates WHERE host_id = ? AND revoked_at = 0 AND not_after > ? LIMIT 1",
        (host_id, now),
    ).fetchone()
    return live is not None
