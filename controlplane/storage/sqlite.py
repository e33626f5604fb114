"""``SqliteStorage``: the control plane's state in one SQLite file (WAL, synchronous=FULL).

One connection behind one lock: the server drives it from a single storage thread anyway, and
tests call it directly. Every method is one transaction. Durability comes from
``synchronous=FULL``; throughput for reports comes from group commit, i.e. the caller hands
``insert_reports`` many agents' batches at once and they share one fsync (see
``controlplane.ingest``): one fsync per report caps a disk at ~1,000 rows/s, one per batch does not.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from controlplane.storage import rows
from controlplane.storage.base import (
    AgentRecord,
    AssignmentPayload,
    AssignmentRecord,
    AssignmentRequest,
    BundleRecord,
    EscalationRecord,
    PauseRecord,
    Report,
    ReportQuery,
    RolloutHost,
    RolloutRecord,
    Signer,
)
from controlplane.storage.schema import MIGRATIONS, migrate, schema_version

ACTIVE_STATES = ("running", "paused")
ROLLOUT_HOST_UPSERT = (
    "INSERT OR REPLACE INTO rollout_hosts (rollout_id, host_id, wave, previous_digest, "
    "previous_version, seq, assigned_at, status, reason, applied_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
)


class SqliteStorage:
    def __init__(self, path: str | Path, migrations: Sequence[str] = MIGRATIONS) -> None:
        """``migrations`` is injectable so a test can exercise an upgrade of a real file."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        migrate(self._db, self.path, migrations)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def schema_version(self) -> int:
        with self._lock:
            return schema_version(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- agents ------------------------------------------------------------------------------

    def upsert_agent(self, agent: AgentRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO agents (host_id, labels, agent_version, bundle_digest, bundle_version,"
                " last_seen, connected, last_seq, health) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(host_id) DO UPDATE SET labels=excluded.labels, "
                "agent_version=excluded.agent_version, bundle_digest=excluded.bundle_digest, "
                "bundle_version=excluded.bundle_version, last_seen=excluded.last_seen, "
                "connected=excluded.connected, last_seq=MAX(last_seq, excluded.last_seq), "
                "health=excluded.health",
                rows.agent_values(agent),
            )

    def touch_agents(self, seen: Mapping[str, tuple[float, Mapping[str, Any]]]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE agents SET last_seen = MAX(last_seen, ?), health = ? WHERE host_id = ?",
                [(at, json.dumps(health), host) for host, (at, health) in seen.items()],
            )

    def set_connected(self, host_id: str, connected: bool, at: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE agents SET connected = ?, last_seen = MAX(last_seen, ?) WHERE host_id = ?",
                (int(connected), at, host_id),
            )

    def disconnect_all(self) -> None:
        with self._tx() as db:
            db.execute("UPDATE agents SET connected = 0 WHERE connected != 0")

    def agent(self, host_id: str) -> AgentRecord | None:
        found = self._query("SELECT * FROM agents WHERE host_id = ?", (host_id,))
        return rows.agent(found[0]) if found else None

    def agents(self) -> list[AgentRecord]:
        return [rows.agent(r) for r in self._query("SELECT * FROM agents ORDER BY host_id")]

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

    def record_apply(
        self, host_id: str, seq: int, digest: str, applied: bool, reason: str, at: float
    ) -> AssignmentRecord | None:
        with self._tx() as db:
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
        sql = (
            f"SELECT * FROM reports WHERE {' AND '.join(clauses)} ORDER BY at DESC, id DESC LIMIT ?"
        )
        return [rows.report(r) for r in self._query(sql, [*args, query.limit])]

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
