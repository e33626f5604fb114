"""Prometheus metrics for the control plane, in four modules imported only with
``--metrics-listen`` (see ``controlplane.instrumentation``):

- this one: the event counters (:class:`ControlPlaneMetrics`), and every public name of the
  others, so callers import from here;
- ``controlplane.metrics_rpc``: the gRPC interceptor that times every RPC;
- ``controlplane.metrics_snapshot``: the live plane, read at scrape time on its event loop;
- ``controlplane.metrics_state``: the collector that turns that read into gauges.

Imports point one way: this module imports the other three, ``metrics_state`` imports
``metrics_snapshot``, and nothing outside imports them but this module and
``controlplane.metrics_server``. Everything takes a ``CollectorRegistry`` of its own, never the
process-global one, so a test can run two control planes in one process.

Naming follows the agent's (``agent/metrics.py``): ``stanch_cp_`` prefix, ``_total`` counters,
``_seconds`` units, 0/1 gauges for states. Cardinality is bounded on purpose; each module says
how for its own labels. Here, issue kinds, gates, modes and rollback states and results are
fixed sets in the code. No label ever carries a host id, a token id, a policy name or a
free-form message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram

from controlplane.gates import GATES, GateMode, GateResult
from controlplane.instrumentation import ISSUE_KINDS
from controlplane.metrics_rpc import RPC_BUCKETS, RpcMetrics
from controlplane.metrics_snapshot import (
    MAX_ACTIVE,
    MAX_LABEL,
    MAX_VERSIONS,
    RECENT_FINISHED,
    STATES,
    STORM_OPERATOR,
    PlaneSnapshot,
    RolloutView,
    _read_stored,
    bounded_versions,
    snapshot_plane,
)
from controlplane.metrics_state import (
    HOST_STATUSES,
    SNAPSHOT_TIMEOUT,
    StateCollector,
    rollout_families,
    state_families,
)
from controlplane.rollouts import ABORTED, ROLLED_BACK
from controlplane.storage.base import RolloutRecord

if TYPE_CHECKING:
    from controlplane.plane import ControlPlane

__all__ = [
    "COMMIT_BUCKETS",
    "COMMIT_ROW_BUCKETS",
    "HOST_STATUSES",
    "MAX_ACTIVE",
    "MAX_LABEL",
    "MAX_VERSIONS",
    "RECENT_FINISHED",
    "RPC_BUCKETS",
    "SNAPSHOT_TIMEOUT",
    "STATES",
    "STORM_OPERATOR",
    "ControlPlaneMetrics",
    "PlaneSnapshot",
    "RolloutView",
    "RpcMetrics",
    "StateCollector",
    "_read_stored",  # tests/unit/test_cp_metrics.py reads the store through it
    "bounded_versions",
    "rollout_families",
    "snapshot_plane",
    "state_families",
]

COMMIT_ROW_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
"""Rows per group commit: one agent's batch when the fleet is quiet, up to the 5,000-row cap."""
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""One SQLite transaction with its fsync: about a millisecond on an SSD, seconds on a sick disk."""


class ControlPlaneMetrics:
    """The event counters (``controlplane.instrumentation.Instruments``). Every method is called
    from the event loop and costs a dictionary lookup and an add."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.heartbeats = Counter(
            "stanch_cp_heartbeats_received",
            "Heartbeats received on agent streams.",
            registry=registry,
        )
        self.heartbeats_persisted = Counter(
            "stanch_cp_heartbeats_persisted",
            "Agent presence rows written by the batched flush (several beats from one host "
            "between flushes are one row).",
            registry=registry,
        )
        self.presence_failures = Counter(
            "stanch_cp_presence_flush_failures",
            "Presence flushes that failed (retried on the next flush).",
            registry=registry,
        )
        self.reports_in = Counter(
            "stanch_cp_reports_received",
            "Reports received on agent streams, before their group commit.",
            registry=registry,
        )
        self.reports_persisted = Counter(
            "stanch_cp_reports_persisted",
            "Reports stored by a group commit (new rows; redeliveries are not counted here).",
            registry=registry,
        )
        self.reports_duplicate = Counter(
            "stanch_cp_reports_duplicate",
            "Redelivered reports already stored: acked again, not stored twice.",
            registry=registry,
        )
        self.commit_failures = Counter(
            "stanch_cp_report_commit_failures",
            "Group commits that failed: nothing was acked, the agents send the reports again.",
            registry=registry,
        )
        self.commit_rows = Histogram(
            "stanch_cp_report_commit_rows",
            "Reports per group commit (one transaction, one fsync).",
            buckets=COMMIT_ROW_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "stanch_cp_report_commit_seconds",
            "How long each group commit took, successful or not.",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.assignments = Counter(
            "stanch_cp_assignments_issued",
            "Signed assignments issued, by why: rollout (a wave), rollback, join (a host that "
            "connected after a rollout completed gets the standing bundle).",
            ["kind"],
            registry=registry,
        )
        self.gate_failures = Counter(
            "stanch_cp_gate_failures",
            "Rollout gates that turned from passing to failing. An enforced one rolls the "
            "rollout back; an observed one is only shown.",
            ["gate", "mode"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "stanch_cp_rollbacks",
            "Rollbacks performed: rolled_back (an enforced gate failed) or aborted (an operator).",
            ["state"],
            registry=registry,
        )
        self.rollback_hosts = Counter(
            "stanch_cp_rollback_hosts",
            "Hosts a rollback handled: rolled_back (sent their previous bundle) or stranded "
            "(no previous bundle to return to; left on the new one).",
            ["result"],
            registry=registry,
        )
        self.storm_trips = Counter(
            "stanch_cp_storm_trips",
            "Times the fleet storm breaker paused a policy fleet-wide.",
            registry=registry,
        )
        # Every known label value starts at 0, so increase() sees the first event and a
        # dashboard shows "none" rather than "no data".
        for kind in ISSUE_KINDS:
            self.assignments.labels(kind)
        for gate in GATES:
            for mode in GateMode:
                self.gate_failures.labels(gate, mode.value)
        for state in (ROLLED_BACK, ABORTED):
            self.rollbacks.labels(state)
        for result in ("rolled_back", "stranded"):
            self.rollback_hosts.labels(result)
        self.rpc = RpcMetrics(registry)

    def heartbeat(self) -> None:
        self.heartbeats.inc()

    def presence_flushed(self, hosts: int, ok: bool) -> None:
        if ok:
            self.heartbeats_persisted.inc(hosts)
        else:
            self.presence_failures.inc()

    def reports_received(self, count: int) -> None:
        self.reports_in.inc(count)

    def reports_committed(self, rows: int, new: int | None, seconds: float) -> None:
        self.commit_seconds.observe(max(0.0, seconds))
        if new is None:
            self.commit_failures.inc()
            return
        self.commit_rows.observe(rows)
        self.reports_persisted.inc(new)
        self.reports_duplicate.inc(rows - new)

    def assignments_issued(self, kind: str, count: int) -> None:
        self.assignments.labels(kind if kind in ISSUE_KINDS else "other").inc(count)

    def rollout_step(self, before: RolloutRecord, results: Sequence[GateResult]) -> None:
        passing = {str(g.get("name")): bool(g.get("passed", True)) for g in before.gate_results}
        for result in results:
            if not result.passed and passing.get(result.name, True):
                self.gate_failures.labels(result.name, result.mode).inc()

    def rolled_back(self, state: str, hosts: int, stranded: int) -> None:
        self.rollbacks.labels(state).inc()
        self.rollback_hosts.labels("rolled_back").inc(hosts)
        self.rollback_hosts.labels("stranded").inc(stranded)

    def storm_tripped(self, trips: int) -> None:
        self.storm_trips.inc(trips)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return self.rpc

    def serve(self, plane: ControlPlane, loop: asyncio.AbstractEventLoop) -> None:
        """Counting only; ``controlplane.metrics_server.ServedMetrics`` serves them."""

    def close(self) -> None:
        pass
