"""The ``notifications`` table: the durable escalation queue, delivered with retry and backoff
(see ``agent.notify``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.journal_report import ReportingDb


@dataclass(frozen=True)
class NotificationRow:
    id: int
    sink: str
    payload: dict[str, Any]
    attempts: int
    created_at: float


class NotificationQueue(ReportingDb):
    """The notification queue, part of ``agent.journal.Journal``."""

    def enqueue_notification(self, sink: str, payload: Mapping[str, Any], at: float) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO notifications (sink, payload, created_at, next_at) VALUES (?,?,?,?)",
                (sink, json.dumps(dict(payload), default=str), at, at),
            )
            return int(cur.lastrowid or 0)

    def due_notifications(self, at: float, limit: int = 20) -> list[NotificationRow]:
        rows = self._query(
            "SELECT * FROM notifications WHERE status = 'pending' AND next_at <= ? "
            "ORDER BY id LIMIT ?",
            (at, limit),
        )
        return [
            NotificationRow(
                r["id"], r["sink"], json.loads(r["payload"]), r["attempts"], r["created_at"]
            )
            for r in rows
        ]

    def next_notification_at(self) -> float | None:
        rows = self._query("SELECT MIN(next_at) FROM notifications WHERE status = 'pending'")
        return rows[0][0] if rows and rows[0][0] is not None else None

    def mark_notification(
        self,
        notification_id: int,
        status: str,
        at: float,
        next_at: float | None = None,
        error: str | None = None,
    ) -> None:
        """``status``: delivered, pending (retry at ``next_at``) or failed (gave up)."""
        with self._tx() as db:
            db.execute(
                "UPDATE notifications SET status = ?, attempts = attempts + 1, "
                "next_at = COALESCE(?, next_at), last_error = ?, "
                "delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END "
                "WHERE id = ?",
                (status, next_at, error, status, at, notification_id),
            )

    def notification_counts(self) -> dict[str, int]:
        """Queued notifications by status (pending, delivered, failed), for metrics."""
        rows = self._query("SELECT status, COUNT(*) FROM notifications GROUP BY status")
        return {str(r[0]): int(r[1]) for r in rows}

    def notifications(self, limit: int = 50) -> list[sqlite3.Row]:
        return self._query("SELECT * FROM notifications ORDER BY id DESC LIMIT ?", (limit,))
