"""The report outbox: a bounded, durable queue in the journal; a row is deleted only on ack.

Lifecycle of one report: the journal writes a record (a decision row, an execution's end) and, in
the same transaction, calls :meth:`Outbox.add`, so the record and its report commit together with
one fsync. The ``FleetClient`` reads pending rows in id order, sends them in batches, and deletes
exactly the ids the control plane acked (after persisting them). A disconnect, an agent restart or
a control-plane restart leaves unacked rows where they are; they are sent again on the next
stream, and the control plane deduplicates by ``(host, id)``: at least once on the wire, exactly
once in its store. Ids come from ``AUTOINCREMENT`` and are never reused.

The bound: at most ``limit`` rows. Past it the *oldest* rows are dropped (the newest say most about
the host's state now) and the drop is added to a persisted counter, ``outbox_dropped`` in
``agent_state``, which every heartbeat carries: loss is counted and visible, never silent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.clock import Clock, SystemClock
from agent.journal import Journal, Report

MAX_BODY_BYTES = 16 * 1024
"""A report's JSON body is cut to this; a host must not ship megabytes of step output upstream."""
MAX_OUTPUT_CHARS = 1024
"""Step stdout/stderr kept in an execution report (the tail: where the error usually is)."""
DROPPED_KEY = "outbox_dropped"


@dataclass(frozen=True)
class PendingReport:
    id: int
    kind: str
    policy: str
    at: float
    outcome: str
    reason: str
    body: str
    """JSON text, at most :data:`MAX_BODY_BYTES`."""


class Outbox:
    """The journal's ``Reporter``. Thread-safe: the main loop and the remediation workers add
    (through the journal's lock), the client thread reads and acks."""

    def __init__(self, journal: Journal, limit: int, clock: Clock | None = None) -> None:
        self.journal = journal
        self.limit = limit
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._depth: int | None = None
        self._listeners: list[Callable[[], None]] = []

    # ---- writing (inside the journal's transaction) -----------------------------------------

    def add(self, db: sqlite3.Connection, report: Report) -> None:
        """Insert ``report`` in the caller's transaction ``db``; drop the oldest past the bound."""
        db.execute(
            "INSERT INTO outbox (kind, policy, at, outcome, reason, body, created_at) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                report.kind,
                report.policy,
                report.at,
                report.outcome,
                report.reason,
                bounded_body(report),
                self.clock.now(),
            ),
        )
        with self._lock:
            depth = self._depth
            if depth is None or depth + 1 > self.limit:
                # Recount when unknown or at the bound: cheap at that rate, and it corrects any
                # drift from a transaction that rolled back after adding.
                depth = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            else:
                depth += 1
            excess = depth - self.limit
            if excess > 0:
                db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                    (excess,),
                )
                _add_dropped(db, excess)
                depth -= excess
            self._depth = depth
        for listener in list(self._listeners):
            listener()

    def put(self, report: Report) -> None:
        """Add a report that no journal record carries (a refused assignment, say)."""
        with self.journal.transaction() as db:
            self.add(db, report)

    def on_add(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from the adding thread, before commit) after each add: a hint
        to look again soon, not a promise that the row is visible yet."""
        self._listeners.append(listener)

    # ---- reading and acking (the client thread) ---------------------------------------------

    def pending(self, after: int = 0, limit: int = 100) -> list[PendingReport]:
        """Up to ``limit`` unacked reports with ids above ``after``, oldest first."""
        with self.journal.transaction() as db:
            rows = db.execute(
                "SELECT id, kind, policy, at, outcome, reason, body FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [PendingReport(*tuple(r)) for r in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acked reports; returns how many were still here (a re-ack deletes nothing)."""
        chosen = sorted(set(ids))
        if not chosen:
            return 0
        deleted = 0
        with self.journal.transaction() as db:
            for start in range(0, len(chosen), 500):  # SQLite's bound-parameter limit
                part = chosen[start : start + 500]
                marks = ",".join("?" * len(part))
                deleted += db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", part).rowcount
        with self._lock:
            if self._depth is not None:
                self._depth = max(0, self._depth - deleted)
        return deleted

    def depth(self) -> int:
        with self.journal.transaction() as db:
            depth = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        with self._lock:
            self._depth = depth
        return depth

    def dropped(self) -> int:
        value = self.journal.agent_state().get(DROPPED_KEY, 0)
        return int(value) if isinstance(value, int) else 0


def _add_dropped(db: sqlite3.Connection, count: int) -> None:
    db.execute(
        "INSERT INTO agent_state (key, value) VALUES (?, ?) ON CONFLICT (key) "
        "DO UPDATE SET value = CAST(value AS INTEGER) + ?",
        (DROPPED_KEY, str(count), count),
    )


def bounded_body(report: Report) -> str:
    """The record as JSON, at most :data:`MAX_BODY_BYTES`: step output cut to its tail, and when
    that is not enough, the bulky fields replaced by a note (the summary fields stay)."""
    body = dict(report.body)
    if report.kind == "execution" and isinstance(body.get("steps"), list):
        body["steps"] = [_trim_step(s) for s in body["steps"]]
    text = json.dumps(body, default=str, sort_keys=True)
    if len(text.encode()) <= MAX_BODY_BYTES:
        return text
    slim = {k: v for k, v in body.items() if isinstance(v, str | int | float | bool) or v is None}
    slim = {k: (v[:2048] if isinstance(v, str) else v) for k, v in slim.items()}
    slim["truncated"] = f"body over {MAX_BODY_BYTES} bytes; bulky fields left out"
    return json.dumps(slim, default=str, sort_keys=True)


def _trim_step(step: Any) -> Any:
    if not isinstance(step, Mapping):
        return step
    out = dict(step)
    for key in ("stdout", "stderr"):
        value = out.get(key)
        if isinstance(value, str) and len(value) > MAX_OUTPUT_CHARS:
            out[key] = "..." + value[-MAX_OUTPUT_CHARS:]
    return out
