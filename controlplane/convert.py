"""Storage records -> ``stanch.v1`` admin messages. The only control-plane module (with the
servicers and the client) that touches generated types, so the wire format stays at the edge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format

from controlplane.pareto import ParetoRow
from controlplane.rollouts import ACTIVE, COMPLETED, PAUSED
from controlplane.storage.base import (
    AgentRecord,
    AssignmentRecord,
    BundleRecord,
    EscalationRecord,
    PauseRecord,
    Report,
    RolloutHost,
    RolloutRecord,
)
from controlplane.waves import parse_waves, targets
from stanch.v1 import admin_pb2, fleet_pb2


def health_dict(health: fleet_pb2.HealthSummary) -> dict[str, Any]:
    return json_format.MessageToDict(health, preserving_proto_field_name=True)


def agent_info(
    agent: AgentRecord, assigned: AssignmentRecord | None, live: float = 0.0
) -> admin_pb2.AgentInfo:
    """``live`` is the newest heartbeat held in memory (presence is flushed every few seconds)."""
    health = fleet_pb2.HealthSummary()
    json_format.ParseDict(dict(agent.health), health, ignore_unknown_fields=True)
    return admin_pb2.AgentInfo(
        host_id=agent.host_id,
        labels=dict(agent.labels),
        agent_version=agent.agent_version,
        bundle_digest=agent.bundle_digest,
        bundle_version=agent.bundle_version,
        last_seen=max(agent.last_seen, live),
        connected=agent.connected,
        last_assignment_seq=agent.last_assignment_seq,
        health=health,
        assigned_digest=assigned.bundle_digest if assigned else "",
        assigned_seq=assigned.seq if assigned else 0,
    )


def bundle_info(
    b: BundleRecord, already: bool = False, warnings: Sequence[str] = ()
) -> admin_pb2.BundleInfo:
    return admin_pb2.BundleInfo(
        digest=b.digest,
        name=b.name,
        version=b.version,
        created=b.created,
        expires=b.expires,
        size=b.size,
        signers=list(b.signers),
        published_at=b.published_at,
        manual_minutes=dict(b.manual_minutes),
        already_published=already,
        warnings=list(warnings),
    )


def report_info(r: Report) -> admin_pb2.ReportInfo:
    return admin_pb2.ReportInfo(
        host_id=r.host_id,
        id=r.id,
        kind=r.kind,
        policy=r.policy,
        at=r.at,
        outcome=r.outcome,
        reason=r.reason,
        body_json=r.body_json,
    )


def pause_info(p: PauseRecord) -> admin_pb2.PauseInfo:
    return admin_pb2.PauseInfo(
        id=p.id,
        scope=p.scope,
        selector=dict(p.selector),
        until=p.until,
        reason=p.reason,
        by=p.by,
        created_at=p.created_at,
    )


def escalation(e: EscalationRecord) -> admin_pb2.Escalation:
    return admin_pb2.Escalation(
        id=e.id, at=e.at, source=e.source, policy=e.policy, message=e.message
    )


def pareto_row(row: ParetoRow) -> admin_pb2.ParetoRow:
    return admin_pb2.ParetoRow(
        policy=row.policy,
        host=row.host,
        count=row.count,
        fixed=row.fixed,
        fixed_rate=row.fixed_rate,
        mttr_seconds=row.mttr_seconds,
        manual_minutes=row.manual_minutes,
        toil_saved_minutes=row.toil_saved_minutes,
    )


def rollout_status(
    r: RolloutRecord,
    bundle: BundleRecord | None,
    hosts: Sequence[RolloutHost],
    matching: int,
) -> admin_pb2.RolloutStatus:
    """A rollout with per-wave progress (cumulative targets for the hosts matching now)."""
    specs = parse_waves(r.waves)
    counts = targets(specs, max(matching, len(hosts)))
    waves = []
    for index, spec in enumerate(specs):
        mine = [h for h in hosts if h.wave == index]
        waves.append(
            admin_pb2.Wave(
                index=index,
                spec=spec.text,
                target=counts[index] if counts else 0,
                assigned=len(mine),
                applied=sum(1 for h in mine if h.status == "applied"),
                failed=sum(1 for h in mine if h.status == "failed"),
                state=_wave_state(r, index),
                started_at=r.wave_started_at if index == r.wave else 0.0,
                bake_until=r.wave_started_at + r.bake_seconds if index == r.wave else 0.0,
            )
        )
    return admin_pb2.RolloutStatus(
        id=r.id,
        bundle_digest=r.bundle_digest,
        bundle_name=bundle.name if bundle else "",
        bundle_version=bundle.version if bundle else 0,
        selector=dict(r.selector),
        state=r.state,
        wave=r.wave,
        waves=waves,
        gates=[_gate(g) for g in r.gate_results],
        reason=r.reason,
        created_at=r.created_at,
        updated_at=r.updated_at,
        bake_seconds=r.bake_seconds,
        matching=matching,
        updated=sum(1 for h in hosts if h.status in ("assigned", "applied", "failed")),
        rolled_back=sum(1 for h in hosts if h.status == "rolled_back"),
        by=r.by,
    )


def _wave_state(r: RolloutRecord, index: int) -> str:
    if index < r.wave or r.state == COMPLETED:
        return "passed"
    if index > r.wave:
        return "pending" if r.state in ACTIVE else "skipped"
    if r.state in ACTIVE:
        return "paused" if r.state == PAUSED else "baking"
    return "halted"


def _gate(g: Mapping[str, Any]) -> admin_pb2.GateResult:
    return admin_pb2.GateResult(
        name=str(g.get("name", "")),
        mode=str(g.get("mode", "")),
        threshold=str(g.get("threshold", "")),
        limit=float(g.get("limit", 0.0)),
        value=float(g.get("value", 0.0)),
        passed=bool(g.get("passed", True)),
        detail=str(g.get("detail", "")),
    )
