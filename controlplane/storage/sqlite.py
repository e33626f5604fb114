"""``SqliteStorage``: the control plane's state in one SQLite file (WAL, synchronous=FULL).

The class is layered by concern: ``SqliteDb`` (connection, pragmas, migrations, transactions),
``ReportTables`` (reports with exactly-once inserts, pauses, escalations, leases),
``DecisionTables`` (approval decisions queued for another replica), and this module:
agents, bundles, assignments and rollouts. Together they implement the ``Storage`` Protocol;
every method is one transaction.
"""

from __future__ import annotations

import json
import sqlite3
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
from controlplane.storage.sqlite_auth import AuthTables
from controlplane.storage.sqlite_decisions import DecisionTables
from controlplane.storage.sqlite_pki import PkiTables
from controlplane.storage.sqlite_reports import ReportTables

ACTIVE_STATES = ("running", "paused")
ROLLOUT_HOST_UPSERT = (
    "INSERT OR REPLACE INTO rollout_hosts (rollout_id, host_id, wave, previous_digest, "
    "previous_version, seq, assigned_at, status, reason, applied_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
)


class SqliteStorage(ReportTables, AuthTables, PkiTables, DecisionTables):
    # ---- agents ------------------------------------------------------------------------------

    def upsert_agent(self, agent: AgentRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO agents (host_id, labels, agent_version, bundle_digest, bundle_version,"
                " last_seen, connected, last_seq, health, replica) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(host_id) DO UPDATE SET labels=excluded.labels, "
                "agent_version=excluded.agent_version, bundle_digest=excluded.bundle_digest, "
                "bundle_version=excluded.bundle_version, last_seen=excluded.last_seen, "
                "connected=excluded.connected, last_seq=MAX(last_seq, excluded.last_seq), "
                "health=excluded.health, replica=excluded.replica",
                rows.agent_values(agent),
            )

    def touch_agents(self, seen: Mapping[str, tuple[float, Mapping[str, Any]]]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE agents SET last_seen = MAX(last_seen, ?), health = ? WHERE host_id = ?",
                [(at, json.dumps(health), host) for host, (at, health) in seen.items()],
            )

    def set_connected(self, host_id: str, connected: bool, at: float, replica: str) -> None:
        with self._tx() as db:
            if connected:
                db.execute(
                    "UPDATE agents SET connected = 1, replica = ?, last_seen = MAX(last_seen, ?) "
                    "WHERE host_id = ?",
                    (replica, at, host_id),
                )
            else:
                db.execute(
                    "UPDATE agents SET connected = 0, last_seen = MAX(last_seen, ?) "
                    "WHERE host_id = ? AND replica = ?",
                    (at, host_id, replica),
                )

    def disconnect_all(self, replica: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE agents SET connected = 0 WHERE connected != 0 AND replica IN (?, '')",
                (replica,),
            )

    def agent(self, host_id: str) -> AgentRecord | None:
        found = self._query("SELECT * FROM agents WHERE host_id = ?", (host_id,))
        return rows.agent(found[0]) if found else None

    def agents(self, health: bool = True) -> list[AgentRecord]:
        if health:
            return [rows.agent(r) for r in self._query("SELECT * FROM agents ORDER BY host_id")]
        found = self._query(
            "SELECT host_id, labels, agent_version, bundle_digest, bundle_version, last_seen, "
            "connected, last_seq, replica FROM agents ORDER BY host_id"
        )
        return rows.agents_without_health(found)

    # ---- bundles -----------------------------------------------------------------------------

    def put_bundle(self, record: BundleRecord, data: bytes) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO bundles (digest, name, version, created, expires, size, "
                "signers, published_at, manual_minutes, data) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (*rows.bundle_values(record), data),
            )
            return cursor.rowcount == 1

    def bundle(self, digest: str) -> BundleRecord | None:
        found = self._query(rows.BUNDLE_COLUMNS + " WHERE digest = ?", (digest,))
        return rows.bundle(found[0]) if found else None

    def bundle_data(self, digest: str) -> bytes | None:
        found = self._query("SELECT data FROM bundles WHERE digest = ?", (digest,))
        return bytes(found[0]["data"]) if found else None

    def bundles(self, name: str = "") -> list[BundleRecord]:
        where, args = (" WHERE name = ?", (name,)) if name else ("", ())
        sql = rows.BUNDLE_COLUMNS + where + " ORDER BY name, version, published_at"
        return [rows.bundle(r) for r in self._query(sql, args)]

    # ---- assignments -------------------------------------------------------------------------

    def issue_assignments(
        self, requests: Sequence[AssignmentRequest], at: float, sign: Signer
    ) -> list[AssignmentRecord]:
        issued = []
        with self._tx() as db:
            for req in requests:
                stored = db.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM assignments WHERE host_id = ?",
                    (req.host_id,),
                ).fetchone()[0]
                agent = db.execute(
                    "SELECT last_seq FROM agents WHERE host_id = ?", (req.host_id,)
                ).fetchone()
                seq = max(int(stored), int(agent[0]) if agent else 0) + 1
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
                db.execute(
                    "INSERT INTO assignments (host_id, seq, bundle_digest, bundle_version, "
                    "rollout_id, issued_at, envelope) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        req.host_id,
                        seq,
                        req.bundle_digest,
                        req.bundle_version,
                        req.rollout_id,
                        at,
                        record.envelope,
                    ),
                )
                if req.track is not None:
                    track = req.track if req.track.seq else replace(req.track, seq=seq)
                    db.execute(ROLLOUT_HOST_UPSERT, rows.rollout_host_values(track))
                issued.append(record)
        return issued

    def current_assignment(self, host_id: str) -> AssignmentRecord | None:
        found = self._query(
            "SELECT * FROM assignments WHERE host_id = ? ORDER BY seq DESC LIMIT 1", (host_id,)
        )
        return rows.assignment(found[0]) if found else None

    def current_assignments(self) -> dict[str, AssignmentRecord]:
        found = self._query(
            "SELECT a.* FROM assignments a JOIN (SELECT host_id, MAX(seq) AS seq FROM assignments"
            " GROUP BY host_id) m ON a.host_id = m.host_id AND a.seq = m.seq"
        )
        return {r["host_id"]: rows.assignment(r) for r in found}

    def pending_assignments(self) -> list[AssignmentRecord]:
        found = self._query(
            "SELECT a.* FROM assignments a WHERE a.status = 'pending' AND a.seq = "
            "(SELECT MAX(b.seq) FROM assignments b WHERE b.host_id = a.host_id) ORDER BY a.host_id"
        )
        return [rows.assignment(r) for r in found]

    def record_apply(
        self, host_id: str, seq: int, digest: str, applied: bool, reason: str, at: float
    ) -> AssignmentRecord | None:
        with self._tx() as db:
            return _apply(db, host_id, seq, digest, applied, reason)

    def record_applies(self, results: Sequence[ApplyResult]) -> list[AppliedRecord | None]:
        done: list[AppliedRecord | None] = []
        with self._tx() as db:
            for r in results:
                record = _apply(db, r.host_id, r.seq, r.digest, r.applied, r.reason)
                if record is None:
                    done.append(None)
                    continue
                row = None
                if record.rollout_id:
                    found = db.execute(
                        "SELECT * FROM rollout_hosts WHERE rollout_id = ? AND host_id = ?",
                        (record.rollout_id, r.host_id),
                    ).fetchone()
                    row = settle_rollout_host(rows.rollout_host(found) if found else None, r)
                    if row is not None:
                        db.execute(ROLLOUT_HOST_UPSERT, rows.rollout_host_values(row))
                done.append(AppliedRecord(record, row))
        return done

    # ---- rollouts ----------------------------------------------------------------------------

    def put_rollout(self, rollout: RolloutRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO rollouts (id, bundle_digest, selector, waves, "
                "bake_seconds, gates, gate_modes, state, wave, wave_started_at, created_at, "
                "updated_at, reason, created_by, gate_results) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows.rollout_values(rollout),
            )

    def rollout(self, rollout_id: str) -> RolloutRecord | None:
        found = self._query("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
        return rows.rollout(found[0]) if found else None

    def rollouts(self, active_only: bool = False) -> list[RolloutRecord]:
        where = f" WHERE state IN {ACTIVE_STATES!r}" if active_only else ""
        found = self._query(f"SELECT * FROM rollouts{where} ORDER BY created_at, id")
        return [rows.rollout(r) for r in found]

    def put_rollout_hosts(self, hosts: Sequence[RolloutHost]) -> None:
        with self._tx() as db:
            db.executemany(ROLLOUT_HOST_UPSERT, [rows.rollout_host_values(h) for h in hosts])

    def rollout_hosts(self, rollout_id: str) -> list[RolloutHost]:
        found = self._query(
            "SELECT * FROM rollout_hosts WHERE rollout_id = ? ORDER BY wave, host_id",
            (rollout_id,),
        )
        return [rows.rollout_host(r) for r in found]

    def rollout_host(self, rollout_id: str, host_id: str) -> RolloutHost | None:
        found = self._query(
            "SELECT * FROM rollout_hosts WHERE rollout_id = ? AND host_id = ?",
            (rollout_id, host_id),
        )
        return rows.rollout_host(found[0]) if found else None


def _apply(
    db: sqlite3.Connection, host_id: str, seq: int, digest: str, applied: bool, reason: str
) -> AssignmentRecord | None:
    """Mark one assignment applied or rejected, inside the caller's transaction."""
    found = db.execute(
        "SELECT * FROM assignments WHERE host_id = ? AND seq = ?", (host_id, seq)
    ).fetchone()
    if found is None:
        return None
    status = "applied" if applied else "rejected"
    db.execute(
        "UPDATE assignments SET status = ?, reason = ? WHERE host_id = ? AND seq = ?",
        (status, reason, host_id, seq),
    )
    if applied:
        db.execute(
            "UPDATE agents SET bundle_digest = ?, bundle_version = ?, "
            "last_seq = MAX(last_seq, ?) WHERE host_id = ?",
            (digest, found["bundle_version"], seq, host_id),
        )
    return replace(rows.assignment(found), status=status, reason=reason)
