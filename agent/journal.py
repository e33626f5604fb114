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
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.sqlite_db import SqliteDb, migrate

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


@dataclass(frozen=True)
class ExecutionRow:
    id: str
    policy: str
    started_at: float
    finished_at: float | None
    status: str
    steps: list[dict[str, Any]]
    verification: str
    observed: dict[str, Any]
    error: str | None


@dataclass(frozen=True)
class DecisionRow:
    id: int
    policy: str
    at: float
    last_at: float
    repeat: int
    outcome: str
    reason: str
    message: str
    until: float | None
    observed: dict[str, Any]
    why: list[str]
    execution_id: str | None


@dataclass(frozen=True)
class NotificationRow:
    id: int
    sink: str
    payload: dict[str, Any]
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Report:
    """One record reported upstream: a new decision row, a finished or interrupted execution,
    an escalation, a bundle rejection. ``body`` is the whole record; the reporter bounds it."""

    kind: str
    """decision | execution | escalation | rejection"""
    policy: str
    at: float
    outcome: str
    reason: str
    body: Mapping[str, Any]


class Reporter(Protocol):
    """Called inside the journal's write transaction (``db``) that created the record."""

    def add(self, db: sqlite3.Connection, report: Report) -> None: ...


class Journal(SqliteDb):
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

    # ---- plumbing ----------------------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT) for tables kept in this file by other
        modules (the outbox)."""
        return self._tx()

    def report(self, report: Report) -> None:
        """Hand ``report`` to the reporter in a transaction of its own (a record that is not a
        journal row, such as an escalation). A no-op with no reporter."""
        if self.reporter is None:
            return
        with self._tx() as db:
            self.reporter.add(db, report)

    def _report(self, db: sqlite3.Connection, report: Report) -> None:
        if self.reporter is not None:
            self.reporter.add(db, report)

    def _backup_path(self, version: int) -> Path:
        return self.path.with_suffix(f".v{version}.bak")

    def _too_new(self, version: int) -> Exception:
        return RuntimeError(
            f"{self.path}: state schema v{version} is newer than this agent "
            f"(v{len(MIGRATIONS)}); upgrade the agent or move the state file aside"
        )

    # ---- decisions ---------------------------------------------------------------------------

    def record_decision(
        self,
        policy: str,
        at: float,
        outcome: str,
        reason: str,
        message: str,
        observed: Mapping[str, Any],
        why: Sequence[str],
        until: float | None = None,
        execution_id: str | None = None,
    ) -> int:
        """Insert a decision, or fold it into the previous one when outcome and reason repeat
        (actions are never folded: each is its own record)."""
        obs = json.dumps(dict(observed), default=str)
        why_json = json.dumps(list(why))
        last = self._last_decision.get(policy)
        with self._tx() as db:
            if last is not None and last[1:] == (outcome, reason) and execution_id is None:
                db.execute(
                    "UPDATE decisions SET repeat = repeat + 1, last_at = ?, message = ?, "
                    "until = ?, observed = ?, why = ? WHERE id = ?",
                    (at, message, until, obs, why_json, last[0]),
                )
                return last[0]
            cur = db.execute(
                "INSERT INTO decisions (policy, at, last_at, outcome, reason, message, until, "
                "observed, why, execution_id) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (policy, at, at, outcome, reason, message, until, obs, why_json, execution_id),
            )
            row_id = int(cur.lastrowid or 0)
            # Only a new row is reported: repeats fold into it, as they do here.
            body = {
                "id": row_id,
                "message": message,
                "until": until,
                "observed": dict(observed),
                "why": list(why),
                "execution_id": execution_id,
            }
            self._report(db, Report("decision", policy, at, outcome, reason, body))
        if execution_id is None:
            self._last_decision[policy] = (row_id, outcome, reason)
        else:
            # An action's record stays as it was: nothing folds into it later.
            self._last_decision.pop(policy, None)
        return row_id

    def forget_last_decision(self, policy: str) -> None:
        """Start a fresh row for the next decision (after the problem cleared, say)."""
        self._last_decision.pop(policy, None)

    def decisions(self, policy: str | None = None, limit: int = 20) -> list[DecisionRow]:
        where, args = ("WHERE policy = ?", [policy]) if policy else ("", [])
        rows = self._query(
            f"SELECT * FROM decisions {where} ORDER BY id DESC LIMIT ?", [*args, limit]
        )
        return [
            DecisionRow(
                r["id"],
                r["policy"],
                r["at"],
                r["last_at"],
                r["repeat"],
                r["outcome"],
                r["reason"],
                r["message"],
                r["until"],
                json.loads(r["observed"]),
                json.loads(r["why"]),
                r["execution_id"],
            )
            for r in rows
        ]

    # ---- executions (intent before action) ---------------------------------------------------

    def begin_execution(
        self,
        policy: str,
        at: float,
        decision_id: int | None,
        observed: Mapping[str, Any],
        approval_id: str | None = None,
    ) -> str:
        """Write and commit (fsync) the intent. Only after this returns may a command run."""
        execution_id = os.urandom(8).hex()
        with self._tx() as db:
            db.execute(
                "INSERT INTO executions (id, policy, decision_id, started_at, status, observed, "
                "approval_id) VALUES (?,?,?,?, 'running', ?, ?)",
                (
                    execution_id,
                    policy,
                    decision_id,
                    at,
                    json.dumps(dict(observed), default=str),
                    approval_id,
                ),
            )
            if approval_id:
                db.execute("UPDATE approvals SET status = 'used' WHERE id = ?", (approval_id,))
        return execution_id

    def record_steps(self, execution_id: str, steps: Sequence[Mapping[str, Any]]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE executions SET steps = ? WHERE id = ?",
                (json.dumps(list(steps), default=str), execution_id),
            )

    def finish_execution(
        self,
        execution_id: str,
        at: float,
        status: str,
        verification: str,
        error: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE executions SET finished_at = ?, status = ?, verification = ?, error = ? "
                "WHERE id = ?",
                (at, status, verification, error, execution_id),
            )
            self._report_execution(db, execution_id, "verification")

    def recover_interrupted(self, at: float) -> list[ExecutionRow]:
        """Mark executions left ``running`` by a crash as ``interrupted``; return them."""
        with self._tx() as db:
            rows = db.execute("SELECT * FROM executions WHERE status = 'running'").fetchall()
            db.execute(
                "UPDATE executions SET status = 'interrupted', finished_at = ?, "
                "error = 'agent stopped before the result was recorded; not re-run' "
                "WHERE status = 'running'",
                (at,),
            )
            for row in rows:
                self._report_execution(db, row["id"], "crash_recovery")
        return [self._execution(r) for r in rows]

    def running_executions(self) -> list[ExecutionRow]:
        rows = self._query("SELECT * FROM executions WHERE status = 'running'")
        return [self._execution(r) for r in rows]

    def mark_interrupted(self, execution_id: str, at: float) -> None:
        with self._tx() as db:
            changed = db.execute(
                "UPDATE executions SET status = 'interrupted', finished_at = ?, "
                "error = 'agent stopped before the result was recorded; not re-run' "
                "WHERE id = ? AND status = 'running'",
                (at, execution_id),
            ).rowcount
            if changed:
                self._report_execution(db, execution_id, "crash_recovery")

    def _report_execution(self, db: sqlite3.Connection, execution_id: str, reason: str) -> None:
        if self.reporter is None:
            return
        row = db.execute("SELECT * FROM executions WHERE id = ?", (execution_id,)).fetchone()
        if row is None:
            return
        record = self._execution(row)
        body = {
            **asdict(record),
            "decision_id": row["decision_id"],
            "detected_at": self._detected_at(db, record.policy, row["decision_id"]),
        }
        at = record.finished_at or record.started_at
        self._report(db, Report("execution", record.policy, at, record.status, reason, body))

    @staticmethod
    def _detected_at(db: sqlite3.Connection, policy: str, decision_id: int | None) -> float | None:
        """When the problem an execution fixed was first decided on: the oldest decision since
        the policy last cleared (MTTR is detection to verified fix, not action to fix)."""
        if decision_id is None:
            return None
        found = db.execute(
            "SELECT MIN(at) FROM decisions WHERE policy = ? AND id <= ? AND id > "
            "(SELECT COALESCE(MAX(id), 0) FROM decisions WHERE policy = ? "
            "AND outcome = 'cleared' AND id < ?)",
            (policy, decision_id, policy, decision_id),
        ).fetchone()[0]
        return float(found) if found is not None else None

    def has_decision(self, execution_id: str, outcome: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM decisions WHERE execution_id = ? AND outcome = ? LIMIT 1",
            (execution_id, outcome),
        )
        return bool(rows)

    def attempts_since(self, policy: str, since: float) -> tuple[float, ...]:
        rows = self._query(
            "SELECT started_at FROM executions WHERE policy = ? AND started_at > ?",
            (policy, since),
        )
        return tuple(r[0] for r in rows)

    def host_attempts_since(self, since: float) -> tuple[float, ...]:
        rows = self._query("SELECT started_at FROM executions WHERE started_at > ?", (since,))
        return tuple(r[0] for r in rows)

    def executions(self, policy: str | None = None, limit: int = 20) -> list[ExecutionRow]:
        where, args = ("WHERE policy = ?", [policy]) if policy else ("", [])
        rows = self._query(
            f"SELECT * FROM executions {where} ORDER BY started_at DESC LIMIT ?", [*args, limit]
        )
        return [self._execution(r) for r in rows]

    def execution(self, execution_id: str) -> ExecutionRow | None:
        rows = self._query("SELECT * FROM executions WHERE id = ?", (execution_id,))
        return self._execution(rows[0]) if rows else None

    @staticmethod
    def _execution(r: sqlite3.Row) -> ExecutionRow:
        return ExecutionRow(
            r["id"],
            r["policy"],
            r["started_at"],
            r["finished_at"],
            r["status"],
            json.loads(r["steps"]),
            r["verification"],
            json.loads(r["observed"]),
            r["error"],
        )

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

    # ---- escalations and the notification queue ----------------------------------------------

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

    # ---- live status snapshot ----------------------------------------------------------------

    def put_policy_state(self, policy: str, at: float, state: Mapping[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO policy_state (policy, updated_at, state) VALUES (?,?,?) "
                "ON CONFLICT (policy) DO UPDATE SET updated_at = ?, state = ?",
                (
                    policy,
                    at,
                    json.dumps(dict(state), default=str),
                    at,
                    json.dumps(dict(state), default=str),
                ),
            )

    def drop_policy_states(self, keep: Sequence[str]) -> None:
        marks = ",".join("?" * len(keep))
        with self._tx() as db:
            db.execute(f"DELETE FROM policy_state WHERE policy NOT IN ({marks})", tuple(keep))

    def policy_states(self) -> dict[str, dict[str, Any]]:
        rows = self._query("SELECT policy, updated_at, state FROM policy_state ORDER BY policy")
        return {r[0]: {**json.loads(r[2]), "updated_at": r[1]} for r in rows}

    def put_agent_state(self, values: Mapping[str, Any]) -> None:
        with self._tx() as db:
            for key, value in values.items():
                db.execute(
                    "INSERT INTO agent_state (key, value) VALUES (?,?) "
                    "ON CONFLICT (key) DO UPDATE SET value = ?",
                    (key, json.dumps(value), json.dumps(value)),
                )

    def agent_state(self) -> dict[str, Any]:
        return {r[0]: json.loads(r[1]) for r in self._query("SELECT key, value FROM agent_state")}

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
