"""Reports, pauses, escalations and leases in PostgreSQL: the fleet-facing tables.

``insert_reports`` keeps the exactly-once rule of every backend: ``(host_id, id)`` is the primary
key and a row already stored is skipped (``ON CONFLICT DO NOTHING``), yet the caller still acks it.
A group commit arrives as one batch (``controlplane.ingest``); it is streamed with ``COPY`` into a
per-connection temporary table and moved over in one ``INSERT ... SELECT``, two round trips and
one durable commit whatever the batch size (row-by-row inserts would cost a round trip each).

``acquire_lease`` is a single upsert whose ``WHERE`` only lets the current holder renew or anyone
take an expired lease, so two replicas racing for it cannot both win: PostgreSQL locks the row for
the conflicting insert, and the loser re-checks the ``WHERE`` against the winner's row. Expiry is
judged by the ``now`` the caller passes (each replica's wall clock): replicas need clocks synced
well within the lease TTL (NTP), the same assumption the rollout bake times already make.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.storage import rows
from controlplane.storage.base import EscalationRecord, PauseRecord, Report, ReportQuery
from controlplane.storage.postgres_db import Conn, PostgresDb, as_row

REPORT_COLUMNS = "host_id, id, kind, policy, at, outcome, reason, body"
STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS report_stage (host_id TEXT, id BIGINT, kind TEXT, "
    "policy TEXT, at DOUBLE PRECISION, outcome TEXT, reason TEXT, body TEXT) "
    "ON COMMIT DELETE ROWS"
)


class PgReportTables(PostgresDb):
    def _configure(self, conn: Conn) -> None:
        """Each new pooled connection gets its report staging table once."""
        super()._configure(conn)
        conn.execute(STAGE)

    # ---- reports -----------------------------------------------------------------------------

    def insert_reports(self, reports: Sequence[Report]) -> int:
        if not reports:
            return 0
        with self._tx() as conn:
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY report_stage ({REPORT_COLUMNS}) FROM STDIN") as copy,
            ):
                for r in reports:
                    copy.write_row(
                        (r.host_id, r.id, r.kind, r.policy, r.at, r.outcome, r.reason, r.body_json)
                    )
            cursor = conn.execute(
                f"INSERT INTO reports ({REPORT_COLUMNS}, received_at) "
                f"SELECT {REPORT_COLUMNS}, extract(epoch FROM now()) FROM report_stage "
                "ON CONFLICT (host_id, id) DO NOTHING"
            )
            return max(cursor.rowcount, 0)

    def reports(self, query: ReportQuery) -> list[Report]:
        clauses: list[str] = ["at >= %s"]
        args: list[Any] = [query.since]
        for column, value in (("host_id", query.host), ("policy", query.policy)):
            if value:
                clauses.append(f"{column} = %s")
                args.append(value)
        if query.kind:
            clauses.append("kind = %s")
            args.append(query.kind)
        if query.hosts:
            clauses.append("host_id = ANY(%s)")
            args.append(list(query.hosts))
        sql = (
            f"SELECT * FROM reports WHERE {' AND '.join(clauses)} "
            "ORDER BY at DESC, id DESC, host_id DESC LIMIT %s"
        )
        return [rows.report(as_row(r)) for r in self._query(sql, [*args, query.limit])]

    def prune_reports(self, before: float) -> int:
        with self._tx() as conn:
            return max(conn.execute("DELETE FROM reports WHERE at < %s", (before,)).rowcount, 0)

    # ---- pauses, escalations, leases ---------------------------------------------------------

    def add_pause(
        self, scope: str, selector: Mapping[str, str], until: float, reason: str, by: str, at: float
    ) -> PauseRecord:
        with self._tx() as conn:
            row = conn.execute(
                "INSERT INTO pauses (scope, selector, until, reason, created_by, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (scope, json.dumps(dict(selector), sort_keys=True), until, reason, by, at),
            ).fetchone()
            assert row is not None  # INSERT ... RETURNING always returns its row
            return PauseRecord(int(row["id"]), scope, selector, until, reason, by, at)

    def clear_pauses(self, scope: str, selector: Mapping[str, str]) -> list[PauseRecord]:
        text = json.dumps(dict(selector), sort_keys=True)
        with self._tx() as conn:
            found = conn.execute(
                "UPDATE pauses SET cleared_at = extract(epoch FROM now()) "
                "WHERE cleared_at IS NULL AND scope = %s AND selector = %s RETURNING *",
                (scope, text),
            ).fetchall()
        return sorted((rows.pause(as_row(r)) for r in found), key=lambda p: p.id)

    def pauses(self, now: float) -> list[PauseRecord]:
        found = self._query(
            "SELECT * FROM pauses WHERE cleared_at IS NULL AND (until = 0 OR until > %s) "
            "ORDER BY id",
            (now,),
        )
        return [rows.pause(as_row(r)) for r in found]

    def add_escalation(self, at: float, source: str, policy: str, message: str) -> int:
        with self._tx() as conn:
            row = conn.execute(
                "INSERT INTO escalations (at, source, policy, message) "
                "VALUES (%s, %s, %s, %s) RETURNING id",
                (at, source, policy, message),
            ).fetchone()
            assert row is not None  # INSERT ... RETURNING always returns its row
            return int(row["id"])

    def escalations(self, since: float) -> list[EscalationRecord]:
        found = self._query("SELECT * FROM escalations WHERE at >= %s ORDER BY id", (since,))
        return [
            EscalationRecord(r["id"], r["at"], r["source"], r["policy"], r["message"])
            for r in found
        ]

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        with self._tx() as conn:
            won = conn.execute(
                "INSERT INTO leases (name, holder, expires) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, "
                "expires = EXCLUDED.expires WHERE leases.holder = EXCLUDED.holder "
                "OR leases.expires < %s RETURNING holder",
                (name, holder, now + ttl, now),
            ).fetchone()
            return won is not None
