"""The ``executions`` table: intent before action. The intent is inserted and committed *before*
the first command runs. A row still ``running`` at start-up was interrupted by a crash; it is
marked ``interrupted``, counts against the budget like any attempt, is reported, and is never
re-run blindly.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.journal_report import Report, ReportingDb


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


class ExecutionLog(ReportingDb):
    """Executions, part of ``agent.journal.Journal``."""

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
