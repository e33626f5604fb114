"""``DecisionStorage`` in SQLite: approval decisions queued for another replica's stream.

One writer at a time makes the claim atomic by itself: the conditional ``UPDATE`` of the second
caller finds the row already delivered and changes nothing.
"""

from __future__ import annotations

from controlplane.storage.base_decisions import (
    DECISION_COLUMNS,
    DecisionRecord,
    decision_record,
    decision_values,
)
from controlplane.storage.sqlite_db import SqliteDb


class DecisionTables(SqliteDb):
    def queue_decision(self, record: DecisionRecord) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO approval_decisions ({DECISION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                decision_values(record),
            )

    def undelivered_decisions(self, now: float) -> list[DecisionRecord]:
        found = self._query(
            "SELECT * FROM approval_decisions WHERE delivered_at = 0 AND expires_at > ? "
            "ORDER BY created_at, nonce",
            (now,),
        )
        return [decision_record(r) for r in found]

    def claim_decision(self, nonce: str, replica: str, now: float) -> bool:
        with self._tx() as db:
            claimed = db.execute(
                "UPDATE approval_decisions SET delivered_at = ?, delivered_by = ? "
                "WHERE nonce = ? AND delivered_at = 0 AND expires_at > ?",
                (now, replica, nonce, now),
            )
            return int(claimed.rowcount) == 1

    def unclaim_decision(self, nonce: str, replica: str) -> bool:
        with self._tx() as db:
            undone = db.execute(
                "UPDATE approval_decisions SET delivered_at = 0, delivered_by = '' "
                "WHERE nonce = ? AND delivered_at != 0 AND delivered_by = ?",
                (nonce, replica),
            )
            return int(undone.rowcount) == 1

    def decision(self, nonce: str) -> DecisionRecord | None:
        found = self._query("SELECT * FROM approval_decisions WHERE nonce = ?", (nonce,))
        return decision_record(found[0]) if found else None

    def purge_decisions(self, now: float) -> int:
        with self._tx() as db:
            gone = db.execute("DELETE FROM approval_decisions WHERE expires_at <= ?", (now,))
            return int(gone.rowcount)
