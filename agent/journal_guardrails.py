"""Guardrail state that must not reset on restart: circuit ``breakers``, ``approvals`` asked of an
operator, and ``escalations`` already sent (so a reason is escalated once per repeat interval).
"""

from __future__ import annotations

import os
import sqlite3

from agent.journal_report import ReportingDb


class Guardrails(ReportingDb):
    """Breakers, approvals and escalations, part of ``agent.journal.Journal``."""

    # ---- breakers ----------------------------------------------------------------------------

    def breaker(self, policy: str) -> tuple[int, float | None]:
        rows = self._query("SELECT failures, opened_at FROM breakers WHERE policy = ?", (policy,))
        return (rows[0][0], rows[0][1]) if rows else (0, None)

    def set_breaker(self, policy: str, failures: int, opened_at: float | None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO breakers (policy, failures, opened_at) VALUES (?,?,?) "
                "ON CONFLICT (policy) DO UPDATE SET failures = ?, opened_at = ?",
                (policy, failures, opened_at, failures, opened_at),
            )

    def reset_breaker(self, policy: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM breakers WHERE policy = ?", (policy,)).rowcount > 0

    # ---- approvals ---------------------------------------------------------------------------

    def create_approval(self, policy: str, at: float, expires_at: float, message: str) -> str:
        approval_id = os.urandom(4).hex()
        with self._tx() as db:
            db.execute(
                "UPDATE approvals SET status = 'expired' WHERE policy = ? AND status = 'pending'",
                (policy,),
            )
            db.execute(
                "INSERT INTO approvals (id, policy, created_at, expires_at, status, message) "
                "VALUES (?,?,?,?, 'pending', ?)",
                (approval_id, policy, at, expires_at, message),
            )
        return approval_id

    def latest_approval(self, policy: str) -> sqlite3.Row | None:
        rows = self._query(
            "SELECT * FROM approvals WHERE policy = ? AND status != 'used' "
            "ORDER BY created_at DESC LIMIT 1",
            (policy,),
        )
        return rows[0] if rows else None

    def decide_approval(self, approval_id: str, approve: bool, by: str, at: float) -> str:
        """Approve or reject a pending request. Returns the policy name; raises LookupError
        with a message an operator can act on."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
            if row is None:
                raise LookupError(
                    f"no approval request {approval_id!r}; see `stanch-agent approvals`"
                )
            if row["status"] != "pending":
                raise LookupError(f"approval {approval_id} is already {row['status']}")
            expired = row["expires_at"] <= at
            if expired:
                db.execute("UPDATE approvals SET status = 'expired' WHERE id = ?", (approval_id,))
            else:
                db.execute(
                    "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ? WHERE id = ?",
                    ("approved" if approve else "rejected", by, at, approval_id),
                )
        # Raised after the commit: raising inside _tx would roll the expiry back.
        if expired:
            raise LookupError(
                f"approval {approval_id} expired; the agent will ask again if the problem persists"
            )
        return str(row["policy"])

    def approvals(self, status: str | None = "pending") -> list[sqlite3.Row]:
        if status is None:
            return self._query("SELECT * FROM approvals ORDER BY created_at DESC LIMIT 50")
        return self._query(
            "SELECT * FROM approvals WHERE status = ? ORDER BY created_at DESC", (status,)
        )

    # ---- escalations -------------------------------------------------------------------------

    def should_escalate(self, policy: str, reason: str, at: float, repeat: float) -> bool:
        """True (and remembered) when this reason was not escalated within ``repeat`` seconds."""
        with self._tx() as db:
            row = db.execute(
                "SELECT at FROM escalations WHERE policy = ? AND reason = ?", (policy, reason)
            ).fetchone()
            if row is not None and row[0] > at - repeat:
                return False
            db.execute(
                "INSERT INTO escalations (policy, reason, at) VALUES (?,?,?) "
                "ON CONFLICT (policy, reason) DO UPDATE SET at = ?",
                (policy, reason, at, at),
            )
            return True

    def has_escalations(self, policy: str) -> bool:
        """True while ``policy`` has an escalation not yet cleared (a page may be open)."""
        return bool(self._query("SELECT 1 FROM escalations WHERE policy = ? LIMIT 1", (policy,)))

    def clear_escalations(self, policy: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM escalations WHERE policy = ?", (policy,))
