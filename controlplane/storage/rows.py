"""SQLite rows <-> storage records, in one place so ``sqlite.py`` reads as the SQL it runs.

Maps and lists are stored as sorted JSON text: readable with the ``sqlite3`` shell during an
incident, and stable, so equal selectors compare equal as strings.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from controlplane.storage.base import (
    AgentRecord,
    AssignmentRecord,
    BundleRecord,
    PauseRecord,
    Report,
    RolloutHost,
    RolloutRecord,
)

BUNDLE_COLUMNS = (
    "SELECT digest, name, version, created, expires, size, signers, published_at, "
    "manual_minutes FROM bundles"
)


def dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def agent_values(a: AgentRecord) -> tuple[Any, ...]:
    return (
        a.host_id,
        dump(dict(a.labels)),
        a.agent_version,
        a.bundle_digest,
        a.bundle_version,
        a.last_seen,
        int(a.connected),
        a.last_assignment_seq,
        dump(dict(a.health)),
        a.replica,
    )


def agent(
    r: sqlite3.Row, labels: dict[str, str] | None = None, with_health: bool = True
) -> AgentRecord:
    """An agent row; ``labels`` already parsed by the caller, ``with_health=False`` for readers
    that never look at the health summary."""
    return AgentRecord(
        host_id=r["host_id"],
        labels=json.loads(r["labels"]) if labels is None else labels,
        agent_version=r["agent_version"],
        bundle_digest=r["bundle_digest"],
        bundle_version=r["bundle_version"],
        last_seen=r["last_seen"],
        connected=bool(r["connected"]),
        last_assignment_seq=r["last_seq"],
        health=json.loads(r["health"]) if with_health else {},
        replica=r["replica"],
    )


def agents_without_health(found: list[sqlite3.Row]) -> list[AgentRecord]:
    """Agents with an empty ``health``, for readers that never look at it (a rollout step,
    every tick). Each distinct labels text is parsed once: a fleet has few label sets and many
    hosts, and parsing was most of the cost of reading 10,000 rows. Each record still gets its
    own dict."""
    parsed: dict[str, dict[str, str]] = {}
    out = []
    for r in found:
        text = r["labels"]
        labels = parsed.get(text)
        if labels is None:
            labels = parsed[text] = json.loads(text)
        out.append(agent(r, dict(labels), with_health=False))
    return out


def bundle_values(b: BundleRecord) -> tuple[Any, ...]:
    return (
        b.digest,
        b.name,
        b.version,
        b.created,
        b.expires,
        b.size,
        dump(list(b.signers)),
        b.published_at,
        dump(dict(b.manual_minutes)),
    )


def bundle(r: sqlite3.Row) -> BundleRecord:
    return BundleRecord(
        digest=r["digest"],
        name=r["name"],
        version=r["version"],
        created=r["created"],
        expires=r["expires"],
        size=r["size"],
        signers=tuple(json.loads(r["signers"])),
        published_at=r["published_at"],
        manual_minutes=json.loads(r["manual_minutes"]),
    )


def assignment(r: sqlite3.Row) -> AssignmentRecord:
    return AssignmentRecord(
        host_id=r["host_id"],
        seq=r["seq"],
        bundle_digest=r["bundle_digest"],
        bundle_version=r["bundle_version"],
        rollout_id=r["rollout_id"],
        issued_at=r["issued_at"],
        envelope=bytes(r["envelope"]),
        status=r["status"],
        reason=r["reason"],
    )


def rollout_values(r: RolloutRecord) -> tuple[Any, ...]:
    return (
        r.id,
        r.bundle_digest,
        dump(dict(r.selector)),
        dump(list(r.waves)),
        r.bake_seconds,
        dump(dict(r.gates)),
        dump(dict(r.gate_modes)),
        r.state,
        r.wave,
        r.wave_started_at,
        r.created_at,
        r.updated_at,
        r.reason,
        r.by,
        dump([dict(g) for g in r.gate_results]),
    )


def rollout(r: sqlite3.Row) -> RolloutRecord:
    return RolloutRecord(
        id=r["id"],
        bundle_digest=r["bundle_digest"],
        selector=json.loads(r["selector"]),
        waves=tuple(json.loads(r["waves"])),
        bake_seconds=r["bake_seconds"],
        gates=json.loads(r["gates"]),
        gate_modes=json.loads(r["gate_modes"]),
        state=r["state"],
        wave=r["wave"],
        wave_started_at=r["wave_started_at"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        reason=r["reason"],
        by=r["created_by"],
        gate_results=tuple(json.loads(r["gate_results"])),
    )


def rollout_host_values(h: RolloutHost) -> tuple[Any, ...]:
    return (
        h.rollout_id,
        h.host_id,
        h.wave,
        h.previous_digest,
        h.previous_version,
        h.seq,
        h.assigned_at,
        h.status,
        h.reason,
        h.applied_at,
    )


def rollout_host(r: sqlite3.Row) -> RolloutHost:
    return RolloutHost(
        rollout_id=r["rollout_id"],
        host_id=r["host_id"],
        wave=r["wave"],
        previous_digest=r["previous_digest"],
        previous_version=r["previous_version"],
        seq=r["seq"],
        assigned_at=r["assigned_at"],
        status=r["status"],
        reason=r["reason"],
        applied_at=r["applied_at"],
    )


def report(r: sqlite3.Row) -> Report:
    return Report(
        host_id=r["host_id"],
        id=r["id"],
        kind=r["kind"],
        policy=r["policy"],
        at=r["at"],
        outcome=r["outcome"],
        reason=r["reason"],
        body_json=r["body"],
    )


def pause(r: sqlite3.Row) -> PauseRecord:
    return PauseRecord(
        id=r["id"],
        scope=r["scope"],
        selector=json.loads(r["selector"]),
        until=r["until"],
        reason=r["reason"],
        by=r["created_by"],
        created_at=r["created_at"],
    )
