"""The agent's values as ``stanch.v1`` messages. The only agent module besides the fleet client's
(``client*``) that touches generated code: when the wire format grows a field, this is the one
place that maps it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.bundle.pointer import ActivePointer
from agent.fleet.apply import ApplyOutcome
from agent.fleet.health import Health
from agent.fleet.outbox import PendingReport
from stanch.v1 import fleet_pb2 as pb


def hello(
    host_id: str,
    labels: Mapping[str, str],
    version: str,
    pointer: ActivePointer | None,
    last_seq: int,
) -> pb.AgentMessage:
    return pb.AgentMessage(
        hello=pb.Hello(
            host_id=host_id,
            labels=dict(labels),
            agent_version=version,
            bundle_digest=pointer.digest if pointer else "",
            bundle_version=pointer.version if pointer else 0,
            last_assignment_seq=last_seq,
        )
    )


def heartbeat(at: float, health: Health) -> pb.AgentMessage:
    return pb.AgentMessage(
        heartbeat=pb.Heartbeat(
            at=at,
            health=pb.HealthSummary(
                policies=health.policies,
                firing=health.firing,
                breakers_open=health.breakers_open,
                storm=health.storm,
                bundle_stale=health.bundle_stale,
                outbox_depth=health.outbox_depth,
                outbox_dropped=health.outbox_dropped,
                firing_policies=list(health.firing_policies),
            ),
        )
    )


def report_batch(rows: Sequence[PendingReport]) -> pb.AgentMessage:
    return pb.AgentMessage(
        reports=pb.ReportBatch(
            reports=[
                pb.Report(
                    id=r.id,
                    kind=r.kind,
                    policy=r.policy,
                    at=r.at,
                    outcome=r.outcome,
                    reason=r.reason,
                    body_json=r.body,
                )
                for r in rows
            ]
        )
    )


def apply_result(outcome: ApplyOutcome) -> pb.AgentMessage:
    return pb.AgentMessage(
        apply_result=pb.ApplyResult(
            assignment_seq=outcome.seq,
            bundle_digest=outcome.digest,
            applied=outcome.applied,
            reason=outcome.reason,
            message=outcome.message,
        )
    )
