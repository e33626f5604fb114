"""The SQLite schema, versioned from the first day, and the code that brings a file up to date.

``MIGRATIONS`` only ever grows: entry N turns schema vN into vN+1, and ``PRAGMA user_version``
records how far a file got. Before upgrading an existing file it is copied aside with SQLite's
online backup API (consistent even with a WAL), so a bad migration is one ``mv`` away from undone.
A file newer than this code is refused rather than half-understood.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from agent.sqlite_db import migrate as apply_migrations
from controlplane.errors import ControlPlaneError

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE agents (
        host_id TEXT PRIMARY KEY, labels TEXT NOT NULL, agent_version TEXT NOT NULL DEFAULT '',
        bundle_digest TEXT NOT NULL DEFAULT '', bundle_version INTEGER NOT NULL DEFAULT 0,
        last_seen REAL NOT NULL DEFAULT 0, connected INTEGER NOT NULL DEFAULT 0,
        last_seq INTEGER NOT NULL DEFAULT 0, health TEXT NOT NULL DEFAULT '{}');
    CREATE TABLE bundles (
        digest TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL,
        created REAL NOT NULL, expires REAL NOT NULL, size INTEGER NOT NULL,
        signers TEXT NOT NULL, published_at REAL NOT NULL, manual_minutes TEXT NOT NULL,
        data BLOB NOT NULL);
    CREATE INDEX bundles_by_name ON bundles (name, version);
    CREATE TABLE assignments (
        host_id TEXT NOT NULL, seq INTEGER NOT NULL, bundle_digest TEXT NOT NULL,
        bundle_version INTEGER NOT NULL, rollout_id TEXT NOT NULL, issued_at REAL NOT NULL,
        envelope BLOB NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
        reason TEXT NOT NULL DEFAULT '', PRIMARY KEY (host_id, seq));
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY, bundle_digest TEXT NOT NULL, selector TEXT NOT NULL,
        waves TEXT NOT NULL, bake_seconds REAL NOT NULL, gates TEXT NOT NULL,
        gate_modes TEXT NOT NULL, state TEXT NOT NULL, wave INTEGER NOT NULL,
        wave_started_at REAL NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT '', created_by TEXT NOT NULL DEFAULT '',
        gate_results TEXT NOT NULL DEFAULT '[]');
    CREATE INDEX rollouts_by_state ON rollouts (state, created_at);
    CREATE TABLE rollout_hosts (
        rollout_id TEXT NOT NULL, host_id TEXT NOT NULL, wave INTEGER NOT NULL,
        previous_digest TEXT NOT NULL, previous_version INTEGER NOT NULL, seq INTEGER NOT NULL,
        assigned_at REAL NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
        applied_at REAL NOT NULL DEFAULT 0, PRIMARY KEY (rollout_id, host_id));
    CREATE TABLE reports (
        host_id TEXT NOT NULL, id INTEGER NOT NULL, kind TEXT NOT NULL, policy TEXT NOT NULL,
        at REAL NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL, body TEXT NOT NULL,
        received_at REAL NOT NULL, PRIMARY KEY (host_id, id));
    CREATE INDEX reports_by_at ON reports (at);
    CREATE INDEX reports_by_policy ON reports (policy, at);
    CREATE TABLE pauses (
        id INTEGER PRIMARY KEY, scope TEXT NOT NULL, selector TEXT NOT NULL,
        until REAL NOT NULL, reason TEXT NOT NULL, created_by TEXT NOT NULL,
        created_at REAL NOT NULL, cleared_at REAL);
    CREATE TABLE escalations (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, source TEXT NOT NULL, policy TEXT NOT NULL,
        message TEXT NOT NULL);
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
    """,
    # v2: security. Operator API tokens (only a hash of the secret is kept), the hash-chained
    # audit log, single-use enrollment tokens, the client certificates issued to hosts, and the
    # hosts cut off by ``opsctl agents revoke``.
    """
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL DEFAULT 0,
        revoked_at REAL NOT NULL DEFAULT 0, created_by TEXT NOT NULL DEFAULT '',
        last_used_at REAL NOT NULL DEFAULT 0);
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL,
        via TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, source TEXT NOT NULL,
        result TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
    CREATE TABLE enrollment_tokens (
        id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, host_id TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL, expires_at REAL NOT NULL, used_at REAL NOT NULL DEFAULT 0,
        used_by TEXT NOT NULL DEFAULT '', created_by TEXT NOT NULL DEFAULT '');
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY, host_id TEXT NOT NULL, not_before REAL NOT NULL,
        not_after REAL NOT NULL, issued_at REAL NOT NULL, revoked_at REAL NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '');
    CREATE INDEX certificates_by_host ON certificates (host_id);
    CREATE TABLE revoked_hosts (
        host_id TEXT PRIMARY KEY, at REAL NOT NULL, revoked_by TEXT NOT NULL,
        reason TEXT NOT NULL);
    """,
    # v3: which replica holds each agent's stream, so a replica that starts or stops marks only
    # its own agents disconnected ('' = written before v3, claimed by no replica).
    """
    ALTER TABLE agents ADD COLUMN replica TEXT NOT NULL DEFAULT '';
    """,
    # v4: signed approval decisions waiting for the replica that holds the host's stream
    # (``controlplane.approvals``): queued by the replica the operator called, sent and marked
    # delivered by exactly one replica, deleted once expired.
    """
    CREATE TABLE approval_decisions (
        nonce TEXT PRIMARY KEY, host_id TEXT NOT NULL, approval_id TEXT NOT NULL,
        envelope BLOB NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
        queued_by TEXT NOT NULL DEFAULT '', delivered_at REAL NOT NULL DEFAULT 0,
        delivered_by TEXT NOT NULL DEFAULT '');
    CREATE INDEX approval_decisions_by_expiry ON approval_decisions (expires_at);
    """,
    # v5: the certificates revoked recently, read every few seconds by each replica's revocation
    # sweep (``controlplane.revocation_sweep``); partial, so unrevoked certificates cost nothing.
    """
    CREATE INDEX certificates_by_revocation ON certificates (revoked_at) WHERE revoked_at > 0;
    """,
)


class SchemaError(ControlPlaneError):
    """The database file cannot be used with this version of the control plane."""


def migrate(db: sqlite3.Connection, path: Path, migrations: Sequence[str] = MIGRATIONS) -> None:
    """Bring ``db`` to the newest schema (see ``agent.sqlite_db.migrate``): backed up first as
    ``<file>.v<N>.bak``; a file newer than this control plane is refused."""
    apply_migrations(
        db,
        migrations,
        lambda current: path.with_name(f"{path.name}.v{current}.bak"),
        lambda current: SchemaError(
            f"{path}: schema v{current} is newer than this control plane "
            f"(v{len(migrations)}); upgrade stanch or restore a backup"
        ),
    )
