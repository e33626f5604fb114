"""Reporting approvals upstream: each change of the journal's ``approvals`` table, once.

The engine asks for approval by writing a row to the journal's ``approvals`` table;
``stanch-agent approve|reject``, a central decision (``agent.fleet.approval``) and the engine
(``used`` when an approved fix starts) move its status on. :meth:`ApprovalReports.scan` turns each
change it has not reported yet into one ``approval`` report (outcome = the status: pending,
approved, rejected, expired, used) carrying the id, policy, created/expiry, message and the values
the agent saw. What was reported is kept in ``agent_state`` and written in the same transaction as
the reports, so a crash neither loses nor repeats one. A ``pending`` row past its expiry is
reported ``expired``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from typing import Any

from agent.fleet.approval_decision import KIND
from agent.fleet.outbox import Outbox
from agent.journal import Journal, Report

STATE_KEY = "approvals_reported"
FINAL = frozenset({"rejected", "expired", "used"})


class ApprovalReports:
    """Turn changes of the ``approvals`` table into ``approval`` reports, each once."""

    def __init__(self, journal: Journal, outbox: Outbox) -> None:
        self.journal = journal
        self.outbox = outbox
        self.lock = threading.RLock()
        """Held by the applier across its decision and the scan that reports it."""
        self._state: dict[str, Any] | None = None

    def scan(self, now: float, extra: Mapping[str, Mapping[str, Any]] | None = None) -> int:
        """Report what changed since the last scan; returns how many reports. ``extra`` adds
        fields to the report of an approval by id (the applier passes the decision's nonce)."""
        with self.lock:
            try:
                return self._scan(now, extra or {})
            except BaseException:
                self._state = None  # the transaction rolled back: reload what was committed
                raise

    def _scan(self, now: float, extra: Mapping[str, Mapping[str, Any]]) -> int:
        with self.journal.transaction() as db:
            state = self._load(db)
            before = json.dumps(state, sort_keys=True)
            open_ids: dict[str, str] = state["open"]
            marks = ",".join("?" * len(open_ids))
            rows = db.execute(
                "SELECT rowid AS seq, * FROM approvals WHERE rowid > ?"
                + (f" OR id IN ({marks})" if open_ids else "")
                + " ORDER BY rowid",
                (state["rowid"], *open_ids),
            ).fetchall()
            sent = 0
            for row in rows:
                state["rowid"] = max(state["rowid"], int(row["seq"]))
                status = str(row["status"])
                if status == "pending" and row["expires_at"] <= now:
                    status = "expired"
                if status == open_ids.get(row["id"]):
                    continue
                body = _body(db, row, status)
                if (
                    status == "pending"
                    and body["decision_id"] is None
                    and now - row["created_at"] < 5
                ):
                    open_ids[row["id"]] = ""  # its decision row is not committed yet: next scan
                    continue
                body.update(extra.get(row["id"], {}))
                at = now if status != "pending" else float(row["created_at"])
                reason = (
                    str(body.get("decided_by") or "") if status in ("approved", "rejected") else ""
                )
                self.outbox.add(db, Report(KIND, row["policy"], at, status, reason, body))
                sent += 1
                if status in FINAL:
                    open_ids.pop(row["id"], None)
                else:
                    open_ids[row["id"]] = status
            if json.dumps(state, sort_keys=True) != before:
                db.execute(
                    "INSERT INTO agent_state (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (STATE_KEY, json.dumps(state)),
                )
        return sent

    def _load(self, db: sqlite3.Connection) -> dict[str, Any]:
        if self._state is None:
            row = db.execute("SELECT value FROM agent_state WHERE key = ?", (STATE_KEY,)).fetchone()
            loaded = json.loads(row[0]) if row is not None else {}
            self._state = {"rowid": int(loaded.get("rowid", 0)), "open": loaded.get("open", {})}
        return self._state


def _body(db: sqlite3.Connection, row: sqlite3.Row, status: str) -> dict[str, Any]:
    """The report body: the approval, the decision that asked for it (values seen), and for a
    used approval the execution it started."""
    found = db.execute(
        "SELECT id, observed FROM decisions WHERE policy = ? AND reason = 'approval_needed' "
        "AND ? BETWEEN at AND last_at ORDER BY id DESC LIMIT 1",
        (row["policy"], row["created_at"]),
    ).fetchone()
    execution = None
    if status == "used":
        hit = db.execute(
            "SELECT id FROM executions WHERE approval_id = ? ORDER BY started_at DESC LIMIT 1",
            (row["id"],),
        ).fetchone()
        execution = hit[0] if hit is not None else None
    return {
        "approval_id": row["id"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "status": status,
        "decided_by": row["decided_by"],
        "decided_at": row["decided_at"],
        "message": row["message"],
        "observed": json.loads(found["observed"]) if found is not None else {},
        "decision_id": found["id"] if found is not None else None,
        "execution_id": execution,
    }
