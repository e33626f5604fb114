"""The agent's durable state: one SQLite file in WAL mode with synchronous=FULL.

What lives here, and why it must survive a crash:
- ``executions``: the intent is inserted and committed *before* the first command runs. A row still
  ``running`` at start-up was interrupted by a crash; it is marked ``interrupted``, counts against
  the budget like any attempt, is reported, and is never re-run blindly.
- ``decisions``: every decision with the values seen and the reason (acted, suppressed, observed).
  Identical consecutive decisions are folded into one row with a repeat count, so a policy held in
  cooldown for an hour is one row, not 3,600.
- ``approvals``, ``breakers``, ``escalations``: guardrail state that must not reset on restart.
- ``notifications``: the durable escalation queue, delivered with retry and backoff.
- ``policy_state``: the live status snapshot that ``stanch-agent status`` reads.
- ``outbox``: reports waiting for the control plane's ack (see ``agent.fleet.outbox``). A
  ``Reporter`` set on the journal writes them in the same transaction as the record they report,
  so a crash can never keep the record and lose its report.

The schema is versioned from the first day; ``MIGRATIONS`` only ever grows, and the file is copied
aside before an upgrade.

This module holds the schema, opening (migrations) and retention; each table's reads and writes
live in a module of its own, and ``Journal`` combines them over one connection:
``agent.journal_decisions``, ``agent.journal_executions``, ``agent.journal_guardrails``,
``agent.journal_notifications``, ``agent.journal_status``, on the base in
``agent.journal_report`` (``Report``, ``Reporter``). The row types and ``Report`` are importable
from here too.
"""

from __future__ import annotations

from pathlib import Path

from agent.journal_decisions import DecisionLog, DecisionRow
from agent.journal_executions import ExecutionLog, ExecutionRow
from agent.journal_guardrails import Guardrails
from agent.journal_notifications import NotificationQueue, NotificationRow
from agent.journal_report import Report, Reporter
from agent.journal_status import StatusSnapshot
from agent.sqlite_db import migrate

__all__ = [
    "KEEP_DECISIONS_PER_POLICY",
    "KEEP_EXECUTIONS_PER_POLICY",
    "KEEP_NOTIFICATIONS_SECONDS",
    "MIGRATIONS",
    "DecisionRow",
    "ExecutionRow",
    "Journal",
    "NotificationRow",
    "Report",
    "Reporter",
]

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY, policy TEXT NOT NULL, at REAL NOT NULL, last_at REAL NOT NULL,
        repeat INTEGER NOT NULL DEFAULT 1, outcome TEXT NOT NULL, reason TEXT NOT NULL,
        message TEXT NOT NULL, until REAL, observed TEXT NOT NULL, why TEXT NOT NULL,
        execution_id TEXT);
    CREATE INDEX decisions_by_policy ON decisions (policy, id);
    CREATE TABLE executions (
        id TEXT PRIMARY KEY, policy TEXT NOT NULL, decision_id INTEGER, started_at REAL NOT NULL,
        finished_at REAL, status TEXT NOT NULL, steps TEXT NOT NULL DEFAULT '[]',
        verification TEXT NOT NULL DEFAULT '', observed TEXT NOT NULL DEFAULT '{}',
        error TEXT, approval_id TEXT, reported INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX executions_by_policy ON executions (policy, started_at);
    CREATE INDEX executions_by_status ON executions (status);
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY, policy TEXT NOT NULL, created_at REAL NOT NULL,
        expires_at REAL NOT NULL, status TEXT NOT NULL, decided_by TEXT NOT NULL DEFAULT '',
        decided_at REAL, message TEXT NOT NULL DEFAULT '');
    CREATE INDEX approvals_by_policy ON approvals (policy, created_at);
    CREATE TABLE breakers (
        policy TEXT PRIMARY KEY, failures INTEGER NOT NULL, opened_at REAL);
    CREATE TABLE escalations (
        policy TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (policy, reason));
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY, sink TEXT NOT NULL, payload TEXT NOT NULL,
        created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending', last_error TEXT, delivered_at REAL);
    CREATE INDEX notifications_due ON notifications (status, next_at);
    CREATE TABLE policy_state (
        policy TEXT PRIMARY KEY, updated_at REAL NOT NULL, state TEXT NOT NULL);
    CREATE TABLE agent_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # v2: the report outbox. AUTOINCREMENT so an id is never reused after its row is acked and
    # deleted: the control plane deduplicates by (host, id).
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, policy TEXT NOT NULL,
        at REAL NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL, body TEXT NOT NULL,
        created_at REAL NOT NULL);
    """,
)

KEEP_DECISIONS_PER_POLICY = 500
KEEP_EXECUTIONS_PER_POLICY = 500
KEEP_NOTIFICATIONS_SECONDS = 7 * 86400


class Journal(DecisionLog, ExecutionLog, Guardrails, NotificationQueue, StatusSnapshot):
    """Thread-safe access to the state file. One connection, one lock: writes are small and
    rare (only when a policy fires), and readers in other processes use WAL snapshots."""

    def __init__(self, path: str | Path) -> None:
        # A bounded page cache (512 KiB): the journal is small and mostly appended to, and the
        # agent's memory must stay flat over months.
        super().__init__(path, cache_kib=512)
        self._last_decision: dict[str, tuple[int, str, str]] = {}
        self.reporter: Reporter | None = None
        """Set when a control plane is configured; None reports nothing (no outbox grows)."""
        try:
            migrate(self._db, MIGRATIONS, self._backup_path, self._too_new)
        except BaseException:
            self._db.close()
            raise

    # ---- opening: backup and version checks for migrate() ------------------------------------

    def _backup_path(self, version: int) -> Path:
        return self.path.with_suffix(f".v{version}.bak")

    def _too_new(self, version: int) -> Exception:
        return RuntimeError(
            f"{self.path}: state schema v{version} is newer than this agent "
            f"(v{len(MIGRATIONS)}); upgrade the agent or move the state file aside"
        )

    # ---- retention ---------------------------------------------------------------------------

    def prune(self, at: float) -> None:
        """Keep the journal bounded: the newest rows per policy, delivered notifications for a
        week. Runs from the agent's housekeeping timer."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM decisions WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() "
                "OVER (PARTITION BY policy ORDER BY id DESC) AS n FROM decisions) WHERE n > ?)",
                (KEEP_DECISIONS_PER_POLICY,),
            )
            db.execute(
                "DELETE FROM executions WHERE status != 'running' AND id IN (SELECT id FROM "
                "(SELECT id, ROW_NUMBER() OVER (PARTITION BY policy ORDER BY started_at DESC) "
                "AS n FROM executions) WHERE n > ?)",
                (KEEP_EXECUTIONS_PER_POLICY,),
            )
            db.execute(
                "DELETE FROM notifications WHERE status != 'pending' AND created_at < ?",
                (at - KEEP_NOTIFICATIONS_SECONDS,),
            )
