"""The live status snapshot that ``stanch-agent status`` reads: ``policy_state`` (one row per
policy) and ``agent_state`` (key/value pairs about the agent itself).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agent.journal_report import ReportingDb


class StatusSnapshot(ReportingDb):
    """The status snapshot, part of ``agent.journal.Journal``."""

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
