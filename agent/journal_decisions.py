"""The ``decisions`` table: every decision with the values seen and the reason (acted, suppressed,
observed). Identical consecutive decisions are folded into one row with a repeat count, so a policy
held in cooldown for an hour is one row, not 3,600. A new row is reported; repeats are not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.journal_report import Report, ReportingDb


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


class DecisionLog(ReportingDb):
    """Decisions, part of ``agent.journal.Journal``."""

    _last_decision: dict[str, tuple[int, str, str]]
    """Policy -> (row id, outcome, reason) of its latest foldable row; set by ``Journal``."""

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

    def has_decision(self, execution_id: str, outcome: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM decisions WHERE execution_id = ? AND outcome = ? LIMIT 1",
            (execution_id, outcome),
        )
        return bool(rows)
