"""Reports, pauses, escalations and leases in SQLite: the fleet-facing tables.

``insert_reports`` is where exactly-once lives: ``(host_id, id)`` is the primary key and a row
already present is ignored (yet the caller still acks it). The caller hands it many agents'
batches at once so they share one fsync (``controlplane.ingest``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.storage import rows
from controlplane.storage.base import EscalationRecord, PauseRecord, Report, ReportQuery
from controlplane.storage.sqlite_db import SqliteDb


class ReportTables(SqliteDb):
    # ---- reports -----------------------------------------------------------------------------

    def insert_reports(self, reports: Sequence[Report]) -> int:
        with self._tx() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO reports (host_id, id, kind, policy, at, outcome, reason, "
                "body, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, strftime('%s', 'now'))",
                [
                    (r.host_id, r.id, r.kind, r.policy, r.at, r.outcome, r.reason, r.body_json)
                    for r in reports
                ],
            )
            return db.total_changes - before

    def reports(self, query: ReportQuery) -> list[Report]:
        clauses: list[str] = ["at >= ?"]
        args: list[Any] = [query.since]
        for column, value in (("host_id", query.host), ("policy", query.policy)):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        if query.kind:
            clauses.append("kind = ?")
            args.append(query.kind)
        if query.hosts:
            clauses.append(f"host_id IN ({','.join('?' * len(query.hosts))})")
            args.extend(query.hosts)
        where = " AND ".join(clauses)
        sql = f"SELECT * FROM reports WHERE {where} ORDER BY at DESC, id DESC, host_id DESC LIMIT ?"
        return [rows.report(r) for r in self._query(sql, [*args, query.limit])]

    def prune_reports(self, before: float) -> int:
        with self._tx() as db:
            return int(db.execute("DELETE FROM reports WHERE at < ?", (before,)).rowcount)

    # ---- pauses, escalations, leases ---------------------------------------------------------

    def add_pause(
        self, scope: str, selector: Mapping[str, str], until: float, reason: str, by: str, at: float
    ) -> PauseRecord:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO pauses (scope, selector, until, reason, created_by, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (scope, json.dumps(dict(selector), sort_keys=True), until, reason, by, at),
            )
            return PauseRecord(int(cursor.lastrowid or 0), scope, selector, until, reason, by, at)

    def clear_pauses(self, scope: str, selector: Mapping[str, str]) -> list[PauseRecord]:
        text = json.dumps(dict(selector), sort_keys=True)
        with self._tx() as db:
            found = db.execute(
                "SELECT * FROM pauses WHERE cleared_at IS NULL AND scope = ? AND selector = ?",
                (scope, text),
            ).fetchall()
            db.execute(
                "UPDATE pauses SET cleared_at = strftime('%s', 'now') "
                "WHERE cleared_at IS NULL AND scope = ? AND selector = ?",
                (scope, text),
            )
        return [rows.pause(r) for r in found]

    def pauses(self, now: float) -> list[PauseRecord]:
        found = self._query(
            "SELECT * FROM pauses WHERE cleared_at IS NULL AND (until = 0 OR until > ?) "
            "ORDER BY id",
            (now,),
        )
        return [rows.pause(r) for r in found]

    def add_escalation(self, at: float, source: str, policy: str, message: str) -> int:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO escalations (at, source, policy, message) VALUES (?, ?, ?, ?)",
                (at, source, policy, message),
            )
            return int(cursor.lastrowid or 0)

    def escalations(self, since: float) -> list[EscalationRecord]:
        found = self._query("SELECT * FROM escalations WHERE at >= ? ORDER BY id", (since,))
        return [
            EscalationRecord(r["id"], r["at"], r["source"], r["policy"], r["message"])
            for r in found
        ]

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        with self._tx() as db:
            db.execute(
                "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, "
                "expires = excluded.expires WHERE leases.holder = excluded.holder "
                "OR leases.expires < ?",
                (name, holder, now + ttl, now),
            )
            row = db.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
            return bool(row is not None and row[0] == holder)
