"""``DecisionStorage`` in PostgreSQL: approval decisions queued for another replica's stream.

Several replicas claim at once here. ``claim_decision`` is one conditional ``UPDATE``: the row
lock makes a second claimer wait for the first to commit, and under READ COMMITTED PostgreSQL then
re-checks the ``WHERE`` against the committed row, which is no longer waiting, so the second
changes nothing and does not send. No separate lock is needed.
"""

from __future__ import annotations

from controlplane.storage.base_decisions import (
    DECISION_COLUMNS,
    DecisionRecord,
    decision_record,
    decision_values,
)
from controlplane.storage.postgres_db import PostgresDb


class PgDecisionTables(PostgresDb):
    def queue_decision(self, record: DecisionRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO approval_decisions ({DECISION_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                decision_values(record),
            )

    def undelivered_decisions(self, now: float) -> list[DecisionRecord]:
        found = self._query(
            "SELECT * FROM approval_decisions WHERE delivered_at = 0 AND expires_at > %s "
            "ORDER BY created_at, nonce",
            (now,),
        )
        return [decision_record(r) for r in found]

    def claim_decision(self, nonce: str, replica: str, now: float) -> bool:
        with self._tx() as conn:
            claimed = conn.execute(
                "UPDATE approval_decisions SET delivered_at = %s, delivered_by = %s "
                "WHERE nonce = %s AND delivered_at = 0 AND expires_at > %s",
                (now, replica, nonce, now),
            )
            return claimed.rowcount == 1

    def unclaim_decision(self, nonce: str, replica: str) -> bool:
        with self._tx() as conn:
            undone = conn.execute(
                "UPDATE approval_decisions SET delivered_at = 0, delivered_by = '' "
                "WHERE nonce = %s AND delivered_at != 0 AND delivered_by = %s",
                (nonce, replica),
            )
            return undone.rowcount == 1

    def decision(self, nonce: str) -> DecisionRecord | None:
        found = self._query("SELECT * FROM approval_decisions WHERE nonce = %s", (nonce,))
        return decision_record(found[0]) if found else None

    def purge_decisions(self, now: float) -> int:
        with self._tx() as conn:
            gone = conn.execute("DELETE FROM approval_decisions WHERE expires_at <= %s", (now,))
            return gone.rowcount
