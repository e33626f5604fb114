"""``PostgresStorage``: the control plane's state in PostgreSQL, shared by several replicas.

Layered like ``SqliteStorage``: ``PostgresDb`` (pool, transactions, migrations),
``PgReportTables`` (reports, pauses, escalations, leases), ``PgSecurityTables`` (tokens, audit,
PKI), ``PgDecisionTables`` (approval decisions queued for another replica), and this module:
agents, bundles, assignments and rollouts. Same tables (the SQLite migrations, translated), same
semantics, every method one transaction.

What changes with several writers: SQLite has one writer at a time, PostgreSQL does not. Where a
method reads, decides and writes, it takes a lock first. ``issue_assignments`` takes a
transaction-scoped advisory lock per host (sorted, so two transactions never wait on each other
in a cycle) before reading the host's highest sequence, so two replicas issuing to one host get
consecutive sequences instead of one failing on the primary key; ``record_apply`` locks the
assignment row it updates, and ``record_applies`` locks its rows in (host, seq) order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from controlplane.storage import rows
from controlplane.storage.base import (
    AgentRecord,
    AppliedRecord,
    ApplyResult,
    AssignmentPayload,
    AssignmentRecord,
    AssignmentRequest,
    BundleRecord,
    RolloutHost,
    RolloutRecord,
    Signer,
    settle_rollout_host,
)
from controlplane.storage.postgres_db import Conn, as_row
from controlplane.storage.postgres_decisions import PgDecisionTables
from controlplane.storage.postgres_reports import PgReportTables
from controlplane.storage.postgres_security import PgSecurityTables

ACTIVE_STATES = ["running", "paused"]
ROLLOUT_HOST_COLUMNS = (
    "rollout_id, host_id, wave, previous_digest, previous_version, seq, assigned_at, status, "
    "reason, applied_at"
)
ROLLOUT_HOST_UPSERT = (
    f"INSERT INTO rollout_hosts ({ROLLOUT_HOST_COLUMNS}) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (rollout_id, host_id) DO UPDATE SET wave = EXCLUDED.wave, "
    "previous_digest = EXCLUDED.previous_digest, previous_version = EXCLUDED.previous_version, "
    "seq = EXCLUDED.seq, assigned_at = EXCLUDED.assigned_at, status = EXCLUDED.status, "
    "reason = EXCLUDED.reason, applied_at = EXCLUDED.applied_at"
)
ROLLOUT_COLUMNS = (
    "id, bundle_digest, selector, waves, bake_seconds, gates, gate_modes, state, wave, "
    "wave_started_at, created_at, updated_at, reason, created_by, gate_results"
)
ASSIGNMENT_LOCK = 0x57A2C4
"""First key of the per-host advisory lock taken while issuing assignments."""


class PostgresStorage(PgReportTables, PgSecurityTables, PgDecisionTables):
    # ---- agents ------------------------------------------------------------------------------

    def upsert_agent(self, agent: AgentRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO agents (host_id, labels, agent_version, bundle_digest, bundle_version,"
                " last_seen, connected, last_seq, health, replica) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (host_id) DO UPDATE SET labels = EXCLUDED.labels, "
                "agent_version = EXCLUDED.agent_version, bundle_digest = EXCLUDED.bundle_digest, "
                "bundle_version = EXCLUDED.bundle_version, last_seen = EXCLUDED.last_seen, "
                "connected = EXCLUDED.connected, "
                "last_seq = GREATEST(agents.last_seq, EXCLUDED.last_seq), "
                "health = EXCLUDED.health, replica = EXCLUDED.replica",
                rows.agent_values(agent),
            )

    def touch_agents(self, seen: Mapping[str, tuple[float, Mapping[str, Any]]]) -> None:
        if not seen:
            return
        with self._tx() as conn, conn.cursor() as cur:
            cur.executemany(
                "UPDATE agents SET last_seen = GREATEST(last_seen, %s), health = %s "
                "WHERE host_id = %s",
                [(at, json.dumps(health), host) for host, (at, health) in seen.items()],
            )

    def set_connected(self, host_id: str, connected: bool, at: float, replica: str) -> None:
        with self._tx() as conn:
            if connected:
                conn.execute(
                    "UPDATE agents SET connected = 1, replica = %s, "
                    "last_seen = GREATEST(last_seen, %s) WHERE host_id = %s",
                    (replica, at, host_id),
                )
            else:
                conn.execute(
                    "UPDATE agents SET connected = 0, last_seen = GREATEST(last_seen, %s) "
                    "WHERE host_id = %s AND replica = %s",
                    (at, host_id, replica),
                )

    def disconnect_all(self, replica: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE agents SET connected = 0 WHERE connected != 0 AND replica IN (%s, '')",
                (replica,),
            )

    def agent(self, host_id: str) -> AgentRecord | None:
        found = self._query("SELECT * FROM agents WHERE host_id = %s", (host_id,))
        return rows.agent(as_row(found[0])) if found else None

    def agents(self, health: bool = True) -> list[AgentRecord]:
        if health:
            return [
                rows.agent(as_row(r)) for r in self._query("SELECT * FROM agents ORDER BY host_id")
            ]
        found = self._query(
            "SELECT host_id, labels, agent_version, bundle_digest, bundle_version, last_seen, "
            "connected, last_seq, replica, '{}' AS health FROM agents ORDER BY host_id"
        )
        return [rows.agent(as_row(r)) for r in found]

    # ---- bundles -----------------------------------------------------------------------------

    def put_bundle(self, record: BundleRecord, data: bytes) -> bool:
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT INTO bundles (digest, name, version, created, expires, size, signers, "
                "published_at, manual_minutes, data) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (digest) DO NOTHING",
                (*rows.bundle_values(record), data),
            )
            return cursor.rowcount == 1

    def bundle(self, digest: str) -> BundleRecord | None:
        found = self._query(rows.BUNDLE_COLUMNS + " WHERE digest = %s", (digest,))
        return rows.bundle(as_row(found[0])) if found else None

    def bundle_data(self, digest: str) -> bytes | None:
        found = self._query("SELECT data FROM bundles WHERE digest = %s", (digest,))
        return bytes(found[0]["data"]) if found else None

    def bundles(self, name: str = "") -> list[BundleRecord]:
        where, args = (" WHERE name = %s", (name,)) if name else ("", ())
        sql = rows.BUNDLE_COLUMNS + where + " ORDER BY name, version, published_at"
        return [rows.bundle(as_row(r)) for r in self._query(sql, args)]

    # ---- assignments -------------------------------------------------------------------------

    def issue_assignments(
        self, requests: Sequence[AssignmentRequest], at: float, sign: Signer
    ) -> list[AssignmentRecord]:
        if not requests:
            return []
        hosts = sorted({r.host_id for r in requests})
        issued = []
        with self._tx() as conn:
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(h)) FROM unnest(%s::text[]) AS h",
                (ASSIGNMENT_LOCK, hosts),
            )
            found = conn.execute(
                "SELECT h AS host_id, GREATEST("
                "(SELECT COALESCE(MAX(seq), 0) FROM assignments WHERE host_id = h), "
                "(SELECT COALESCE(MAX(last_seq), 0) FROM agents WHERE host_id = h)) AS seq "
                "FROM unnest(%s::text[]) AS h",
                (hosts,),
            ).fetchall()
            last = {r["host_id"]: int(r["seq"]) for r in found}
            inserts, tracks = [], []
            for req in requests:
                seq = last[req.host_id] = last[req.host_id] + 1
                payload = AssignmentPayload(
                    req.host_id, req.bundle_digest, req.bundle_version, seq, at, req.rollout_id
                )
                record = AssignmentRecord(
                    req.host_id,
                    seq,
                    req.bundle_digest,
                    req.bundle_version,
                    req.rollout_id,
                    at,
                    sign(payload),
                )
                inserts.append(
                    (
                        req.host_id,
                        seq,
                        req.bundle_digest,
                        req.bundle_version,
                        req.rollout_id,
                        at,
                        record.envelope,
                    )
                )
                if req.track is not None:
                    track = req.track if req.track.seq else replace(req.track, seq=seq)
                    tracks.append(rows.rollout_host_values(track))
                issued.append(record)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO assignments (host_id, seq, bundle_digest, bundle_version, "
                    "rollout_id, issued_at, envelope) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    inserts,
                )
                if tracks:
                    cur.executemany(ROLLOUT_HOST_UPSERT, tracks)
        return issued

    def current_assignment(self, host_id: str) -> AssignmentRecord | None:
        found = self._query(
            "SELECT * FROM assignments WHERE host_id = %s ORDER BY seq DESC LIMIT 1", (host_id,)
        )
        return rows.assignment(as_row(found[0])) if found else None

    def current_assignments(self) -> dict[str, AssignmentRecord]:
        found = self._query(
            "SELECT DISTINCT ON (host_id) * FROM assignments ORDER BY host_id, seq DESC"
        )
        return {r["host_id"]: rows.assignment(as_row(r)) for r in found}

    def pending_assignments(self) -> list[AssignmentRecord]:
        found = self._query(
            "SELECT a.* FROM assignments a WHERE a.status = 'pending' AND a.seq = "
            "(SELECT MAX(b.seq) FROM assignments b WHERE b.host_id = a.host_id) ORDER BY a.host_id"
        )
        return [rows.assignment(as_row(r)) for r in found]

    def record_apply(
        self, host_id: str, seq: int, digest: str, applied: bool, reason: str, at: float
    ) -> AssignmentRecord | None:
        with self._tx() as conn:
            return _apply(conn, host_id, seq, digest, applied, reason)

    def record_applies(self, results: Sequence[ApplyResult]) -> list[AppliedRecord | None]:
        """As ``record_apply`` plus ``settle_rollout_host`` for each result in (host, seq)
        order, but in a fixed number of round trips per batch rather than five per result: the
        rows are locked and read in bulk (in (host, seq) order, so two batches never wait on each
        other in a cycle), each result is applied in memory in that order (a repeated result
        sees the first one's effect, as it would row by row), and the final rows are written
        back in bulk."""
        if not results:
            return []
        order = sorted(range(len(results)), key=lambda i: (results[i].host_id, results[i].seq))
        hosts = [results[i].host_id for i in order]
        seqs = [results[i].seq for i in order]
        done: dict[int, AppliedRecord | None] = {}
        with self._tx() as conn:
            found = conn.execute(
                "SELECT a.* FROM assignments a JOIN unnest(%s::text[], %s::bigint[]) AS k(h, s) "
                "ON a.host_id = k.h AND a.seq = k.s ORDER BY a.host_id, a.seq FOR UPDATE OF a",
                (hosts, seqs),
            ).fetchall()
            stored = {(r["host_id"], r["seq"]): rows.assignment(as_row(r)) for r in found}
            assignments: dict[tuple[str, int], AssignmentRecord] = {}
            agents: dict[str, tuple[str, int, int]] = {}
            records: dict[int, AssignmentRecord] = {}
            for i in order:
                r = results[i]
                base = stored.get((r.host_id, r.seq))
                if base is None:
                    done[i] = None
                    continue
                status = "applied" if r.applied else "rejected"
                record = replace(base, status=status, reason=r.reason)
                stored[(r.host_id, r.seq)] = assignments[(r.host_id, r.seq)] = record
                records[i] = record
                if r.applied:
                    _, _, seq = agents.get(r.host_id, ("", 0, 0))
                    agents[r.host_id] = (r.digest, base.bundle_version, max(seq, r.seq))
            keys = sorted(
                {(rec.rollout_id, rec.host_id) for rec in records.values() if rec.rollout_id}
            )
            hosts_rows: dict[tuple[str, str], RolloutHost] = {}
            if keys:
                locked = conn.execute(
                    "SELECT t.* FROM rollout_hosts t "
                    "JOIN unnest(%s::text[], %s::text[]) AS k(r, h) "
                    "ON t.rollout_id = k.r AND t.host_id = k.h "
                    "ORDER BY t.rollout_id, t.host_id FOR UPDATE OF t",
                    ([k[0] for k in keys], [k[1] for k in keys]),
                ).fetchall()
                hosts_rows = {
                    (r["rollout_id"], r["host_id"]): rows.rollout_host(as_row(r)) for r in locked
                }
            settled: dict[tuple[str, str], RolloutHost] = {}
            for i in order:
                if i not in records:
                    continue
                record, row = records[i], None
                if record.rollout_id:
                    key = (record.rollout_id, record.host_id)
                    row = settle_rollout_host(hosts_rows.get(key), results[i])
                    if row is not None:
                        hosts_rows[key] = settled[key] = row
                done[i] = AppliedRecord(record, row)
            with conn.cursor() as cur:
                if assignments:
                    cur.execute(
                        "UPDATE assignments a SET status = k.st, reason = k.re "
                        "FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[]) "
                        "AS k(h, s, st, re) WHERE a.host_id = k.h AND a.seq = k.s",
                        (
                            [k[0] for k in assignments],
                            [k[1] for k in assignments],
                            [a.status for a in assignments.values()],
                            [a.reason for a in assignments.values()],
                        ),
                    )
                if agents:
                    names = sorted(agents)
                    cur.execute(
                        "SELECT 1 FROM agents WHERE host_id = ANY(%s) ORDER BY host_id FOR UPDATE",
                        (names,),
                    )
                    cur.execute(
                        "UPDATE agents g SET bundle_digest = k.d, bundle_version = k.v, "
                        "last_seq = GREATEST(g.last_seq, k.s) "
                        "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) "
                        "AS k(h, d, v, s) WHERE g.host_id = k.h",
                        (
                            names,
                            [agents[h][0] for h in names],
                            [agents[h][1] for h in names],
                            [agents[h][2] for h in names],
                        ),
                    )
                if settled:
                    cur.executemany(
                        ROLLOUT_HOST_UPSERT, [rows.rollout_host_values(h) for h in settled.values()]
                    )
        return [done[i] for i in range(len(results))]

    # ---- rollouts ----------------------------------------------------------------------------

    def put_rollout(self, rollout: RolloutRecord) -> None:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in ROLLOUT_COLUMNS.split(", ")[1:])
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES ({', '.join(['%s'] * 15)}) "
                f"ON CONFLICT (id) DO UPDATE SET {updates}",
                rows.rollout_values(rollout),
            )

    def rollout(self, rollout_id: str) -> RolloutRecord | None:
        found = self._query("SELECT * FROM rollouts WHERE id = %s", (rollout_id,))
        return rows.rollout(as_row(found[0])) if found else None

    def rollouts(self, active_only: bool = False) -> list[RolloutRecord]:
        where, args = (" WHERE state = ANY(%s)", (ACTIVE_STATES,)) if active_only else ("", ())
        found = self._query(f"SELECT * FROM rollouts{where} ORDER BY created_at, id", args)
        return [rows.rollout(as_row(r)) for r in found]

    def put_rollout_hosts(self, hosts: Sequence[RolloutHost]) -> None:
        if not hosts:
            return
        with self._tx() as conn, conn.cursor() as cur:
            cur.executemany(ROLLOUT_HOST_UPSERT, [rows.rollout_host_values(h) for h in hosts])

    def rollout_hosts(self, rollout_id: str) -> list[RolloutHost]:
        found = self._query(
            "SELECT * FROM rollout_hosts WHERE rollout_id = %s ORDER BY wave, host_id",
            (rollout_id,),
        )
        return [rows.rollout_host(as_row(r)) for r in found]

    def rollout_host(self, rollout_id: str, host_id: str) -> RolloutHost | None:
        found = self._query(
            "SELECT * FROM rollout_hosts WHERE rollout_id = %s AND host_id = %s",
            (rollout_id, host_id),
        )
        return rows.rollout_host(as_row(found[0])) if found else None


def _apply(
    conn: Conn, host_id: str, seq: int, digest: str, applied: bool, reason: str
) -> AssignmentRecord | None:
    """Lock and mark one assignment applied or rejected, inside the caller's transaction."""
    found = conn.execute(
        "SELECT * FROM assignments WHERE host_id = %s AND seq = %s FOR UPDATE",
        (host_id, seq),
    ).fetchone()
    if found is None:
        return None
    status = "applied" if applied else "rejected"
    conn.execute(
        "UPDATE assignments SET status = %s, reason = %s WHERE host_id = %s AND seq = %s",
        (status, reason, host_id, seq),
    )
    if applied:
        conn.execute(
            "UPDATE agents SET bundle_digest = %s, bundle_version = %s, "
            "last_seq = GREATEST(last_seq, %s) WHERE host_id = %s",
            (digest, found["bundle_version"], seq, host_id),
        )
    return replace(rows.assignment(as_row(found)), status=status, reason=reason)
