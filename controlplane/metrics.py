"""Prometheus metrics for the control plane: event counters, the gRPC interceptor that times
every RPC, and a scrape-time collector that reads the live plane.

Imported only with ``--metrics-listen`` (see ``controlplane.instrumentation``). Everything takes a
``CollectorRegistry`` of its own, never the process-global one, so a test can run two control
planes in one process.

Naming follows the agent's (``agent/metrics.py``): ``stanch_cp_`` prefix, ``_total`` counters,
``_seconds`` units, 0/1 gauges for states. Cardinality is bounded on purpose:

- rollouts appear by id only while active (at most :data:`MAX_ACTIVE`) and for the last
  :data:`RECENT_FINISHED` finished ones; counts over every stored rollout carry only ``state``;
- gates, modes, states, issue kinds and rollback results are fixed sets in the code;
- agent versions are what agents say in Hello: cut to :data:`MAX_LABEL` characters and, beyond
  the :data:`MAX_VERSIONS` most common, summed under ``other``;
- RPC labels come only from methods the server actually serves; a call to an unknown method is
  answered UNIMPLEMENTED by grpc and not recorded;
- enrollment, renewal and operator authentication outcomes carry only the fixed results and
  methods of ``controlplane.security_events``;
- no label ever carries a host id, a token id, a policy name or a free-form message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from agent import __version__
from controlplane.gates import GATES, GateMode, GateResult
from controlplane.grpc_wrap import rewrap
from controlplane.instrumentation import ISSUE_KINDS
from controlplane.rollouts import ABORTED, ACTIVE, COMPLETED, PAUSED, ROLLED_BACK, RUNNING
from controlplane.security_events import SecurityEvents
from controlplane.security_metrics import EXPIRY_REFRESH, expiring_hosts, security_families
from controlplane.storage.base import PauseRecord, RolloutRecord, Storage

if TYPE_CHECKING:
    from controlplane.plane import ControlPlane

log = logging.getLogger("stanch.cp.metrics")

STATES = (RUNNING, PAUSED, COMPLETED, ROLLED_BACK, ABORTED)
HOST_STATUSES = ("assigned", "applied", "failed", "rolled_back", "stranded")
STORM_OPERATOR = "storm-breaker"
"""The ``by`` of pauses the fleet storm breaker sets (``controlplane.killswitch``)."""
MAX_ACTIVE = 20
RECENT_FINISHED = 5
MAX_VERSIONS = 20
MAX_LABEL = 64
SNAPSHOT_TIMEOUT = 5.0
"""A scrape waits this long for the event loop and the storage thread; then it answers with
``stanch_cp_state_collect_success 0`` instead of hanging Prometheus' scrape."""
COMMIT_ROW_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
"""Rows per group commit: one agent's batch when the fleet is quiet, up to the 5,000-row cap."""
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""One SQLite transaction with its fsync: about a millisecond on an SSD, seconds on a sick disk."""
RPC_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(30.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0),
)
"""Admin and health calls take milliseconds; a ``Fleet/Connect`` stream is observed when it ends,
so its "latency" is the stream's lifetime: the upper buckets exist for those."""


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


# ---- RPCs ----------------------------------------------------------------------------------------

Q = TypeVar("Q")
R = TypeVar("R")
Handler = grpc.RpcMethodHandler
_CANCELLED = (asyncio.CancelledError, GeneratorExit)


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Times every RPC the server answers, by service, method, type and status code.

    Put first in the interceptor chain, so calls the token check refuses are counted too
    (``UNAUTHENTICATED``). The code is the one the handler aborted with or set, ``OK`` when it
    returned, ``CANCELLED`` when the client went away (an agent disconnecting ends its
    ``Connect`` stream this way), ``UNKNOWN`` when it raised.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handling = Histogram(
            "stanch_cp_grpc_server_handling_seconds",
            "RPC duration on the server, from the handler's start to its end (for streams, the "
            "stream's lifetime).",
            ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "stanch_cp_grpc_server_in_flight",
            "RPCs being handled now (open agent streams included).",
            ["grpc_service", "grpc_method"],
            registry=registry,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler[Q, R] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler[Q, R] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        return self._wrap(handler, service or "unknown", method)

    def _wrap(self, handler: Handler[Q, R], service: str, method: str) -> Handler[Q, R]:
        labels = (service, method, _rpc_type(handler))
        # A sync handler runs in grpc's thread pool; ours are all async, so it stays untimed.
        return rewrap(
            handler,
            lambda behavior, unary: self._timed_stream(behavior, labels),
            lambda behavior, unary: self._timed_call(behavior, labels),
        )

    def _timed_call(
        self,
        behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
        labels: tuple[str, str, str],
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = self._start(labels)
            code = "UNKNOWN"
            try:
                result = await behavior(request, context)
                code = _code(context, "OK")
                return result
            except BaseException as exc:
                code = _failure(context, exc)
                raise
            finally:
                self._finish(labels, code, started)

        return timed

    def _timed_stream(
        self,
        behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncGenerator[Any, None]],
        labels: tuple[str, str, str],
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncGenerator[Any, None]]:
        async def timed(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncGenerator[Any, None]:
            started = self._start(labels)
            code = "UNKNOWN"
            try:
                # aclosing: when grpc closes this wrapper (the client went away), the servicer's
                # own generator is closed at once too, so its cleanup runs now, not at GC.
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
                code = _code(context, "OK")
            except BaseException as exc:
                code = _failure(context, exc)
                raise
            finally:
                self._finish(labels, code, started)

        return timed

    def _start(self, labels: tuple[str, str, str]) -> float:
        self.in_flight.labels(*labels[:2]).inc()
        return time.monotonic()

    def _finish(self, labels: tuple[str, str, str], code: str, started: float) -> None:
        self.in_flight.labels(*labels[:2]).dec()
        self.handling.labels(*labels, code).observe(time.monotonic() - started)


def _rpc_type(handler: Handler[Any, Any]) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _code(context: grpc.aio.ServicerContext[Any, Any], default: str) -> str:
    """The status the handler set or aborted with, else ``default``."""
    try:
        code = context.code()
    except Exception:  # not every context implementation answers; the default is right then
        return default
    return code.name if isinstance(code, grpc.StatusCode) else default


def _failure(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> str:
    if isinstance(exc, _CANCELLED):
        return "CANCELLED"
    return _code(context, "UNKNOWN")


# ---- state, read at scrape time ------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutView:
    record: RolloutRecord
    hosts: Mapping[str, int] = field(default_factory=dict)
    """Rollout hosts by status; read for active rollouts only."""


@dataclass(frozen=True)
class PlaneSnapshot:
    connected: int = 0
    versions: Mapping[str, int] = field(default_factory=dict)
    reports_pending: int = 0
    tasks: Mapping[str, bool] = field(default_factory=dict)
    loop_lag: float = 0.0
    rollouts_by_state: Mapping[str, int] = field(default_factory=dict)
    rollouts: tuple[RolloutView, ...] = ()
    pauses: Mapping[str, int] = field(default_factory=dict)
    replica: str = ""
    security: SecurityEvents | None = None
    expiring_certificates: int | None = None
    """Hosts whose newest unrevoked certificate expires within 7 days
    (``controlplane.security_metrics``)."""


@dataclass(frozen=True)
class _Stored:
    by_state: Mapping[str, int]
    rollouts: tuple[RolloutView, ...]
    pauses: tuple[PauseRecord, ...]


async def snapshot_plane(plane: ControlPlane, scheduled: float) -> PlaneSnapshot:
    """Read ``plane`` on its event loop. ``scheduled`` (``time.monotonic()``) is when the scrape
    asked: the delay before this coroutine ran is the event loop's lag."""
    lag = max(0.0, time.monotonic() - scheduled)
    versions = Tally(conn.agent_version for conn in plane.connections.all())
    connected = len(plane.connections)
    pending = plane.ingestor.pending_rows
    tasks = plane.task_states()
    events = plane.auth.events
    security = events.copy()
    stored = await plane.store.run(_read_stored, plane.db, plane.clock.now())
    if plane.clock.monotonic() >= events.expiring_checked + EXPIRY_REFRESH:
        count = await plane.store.run(expiring_hosts, plane.db, plane.clock.now())
        events.expiring, events.expiring_checked = count, plane.clock.monotonic()
    pauses = Tally("storm-breaker" if p.by == STORM_OPERATOR else "operator" for p in stored.pauses)
    return PlaneSnapshot(
        connected=connected,
        versions=bounded_versions(versions),
        reports_pending=pending,
        tasks=tasks,
        loop_lag=lag,
        rollouts_by_state=stored.by_state,
        rollouts=stored.rollouts,
        pauses={source: pauses.get(source, 0) for source in ("operator", "storm-breaker")},
        replica=plane.settings.holder,
        security=security,
        expiring_certificates=events.expiring,
    )


def _read_stored(db: Storage, now: float) -> _Stored:
    """On the storage thread: three small queries, plus the hosts of each active rollout."""
    every = db.rollouts(False)
    active = [r for r in every if r.state in ACTIVE][-MAX_ACTIVE:]
    finished = [r for r in every if r.state not in ACTIVE][-RECENT_FINISHED:]
    views = [RolloutView(r, Tally(h.status for h in db.rollout_hosts(r.id))) for r in active]
    views += [RolloutView(r) for r in finished]
    views.sort(key=lambda v: (v.record.created_at, v.record.id))
    by_state = Tally(r.state for r in every)
    return _Stored(
        {state: by_state.get(state, 0) for state in STATES},
        tuple(views),
        tuple(db.pauses(now)),
    )


def bounded_versions(versions: Mapping[str, int]) -> dict[str, int]:
    """The :data:`MAX_VERSIONS` most common versions by name, the rest summed as ``other``."""
    cut: Tally[str] = Tally()
    for version, count in versions.items():
        cut[(version or "unknown")[:MAX_LABEL]] += count
    ranked = cut.most_common()
    kept = dict(ranked[:MAX_VERSIONS])
    rest = sum(count for _, count in ranked[MAX_VERSIONS:])
    if rest:
        kept["other"] = kept.get("other", 0) + rest
    return kept


class StateCollector(Collector):
    """Gauges read from the live plane at scrape time.

    The scrape runs on the HTTP server's thread; the plane lives on the event loop. ``read``
    hands a coroutine to the loop and waits for it (at most :data:`SNAPSHOT_TIMEOUT`), so the
    plane is only ever touched from its own thread. When that fails (the loop is wedged, storage
    is stuck) the scrape still answers, with ``stanch_cp_state_collect_success 0``, like the
    agent's collector and node_exporter's ``..._collector_success``.
    """

    def __init__(self, read: Callable[[], PlaneSnapshot]) -> None:
        self.read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # Dynamic: nothing to check for duplicates at registration.

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily | CounterMetricFamily]:
        started = time.monotonic()
        try:
            snap = self.read()
        except Exception as exc:  # The scrape must answer; say the state part failed.
            log.warning(
                "metrics_snapshot_failed",
                extra={
                    "event": "metrics_snapshot_failed",
                    "fields": {"error": str(exc) or type(exc).__name__},
                },
            )
            ok = False
        else:
            ok = True
            yield from state_families(snap)
        yield _gauge("stanch_cp_state_collect_success", "1 when the live state could be read.", ok)
        yield _gauge(
            "stanch_cp_state_collect_duration_seconds",
            "How long reading the live state took.",
            time.monotonic() - started,
        )


def state_families(
    snap: PlaneSnapshot,
) -> Iterator[GaugeMetricFamily | InfoMetricFamily | CounterMetricFamily]:
    info = InfoMetricFamily("stanch_cp", "The control plane build and replica.")
    info.add_metric([], {"version": __version__, "replica": snap.replica})
    yield info
    yield _gauge(
        "stanch_cp_agents_connected", "Agents with an open Fleet stream now.", snap.connected
    )
    by_version = GaugeMetricFamily(
        "stanch_cp_agents_connected_by_version",
        "Connected agents by the version they announced (the most common 20; the rest: other).",
        labels=["version"],
    )
    for version, count in sorted(snap.versions.items()):
        by_version.add_metric([version], float(count))
    yield by_version
    yield _gauge(
        "stanch_cp_reports_pending",
        "Reports received and not yet durable: queued for, or inside, a group commit.",
        snap.reports_pending,
    )
    tasks = GaugeMetricFamily(
        "stanch_cp_task_running",
        "1 while the background task runs (report-writer, presence, rollouts, storm-breaker, "
        "retention).",
        labels=["task"],
    )
    for name, running in sorted(snap.tasks.items()):
        tasks.add_metric([name], float(running))
    yield tasks
    yield _gauge(
        "stanch_cp_event_loop_lag_seconds",
        "How long a scrape's request waited for the event loop.",
        snap.loop_lag,
    )
    pauses = GaugeMetricFamily(
        "stanch_cp_fleet_pauses_active",
        "Central pauses in force, by who set them: operator (opsctl pause) or storm-breaker.",
        labels=["source"],
    )
    for source, count in sorted(snap.pauses.items()):
        pauses.add_metric([source], float(count))
    yield pauses
    if snap.security is not None:
        yield from security_families(snap.security)
    if snap.expiring_certificates is not None:
        yield _gauge(
            "stanch_cp_host_certificates_expiring_soon",
            "Hosts whose newest certificate is unrevoked and expires within 7 days (an agent "
            "renews at two thirds of its lifetime: a host here is failing to renew). "
            "Recomputed every 5 minutes.",
            snap.expiring_certificates,
        )
    yield from rollout_families(snap)


def rollout_families(snap: PlaneSnapshot) -> Iterator[GaugeMetricFamily]:
    counts = GaugeMetricFamily(
        "stanch_cp_rollouts", "Stored rollouts by state (every rollout ever).", labels=["state"]
    )
    for s in STATES:
        counts.add_metric([s], float(snap.rollouts_by_state.get(s, 0)))
    yield counts
    state = GaugeMetricFamily(
        "stanch_cp_rollout_state",
        f"1 for the rollout's state, 0 for the others; active rollouts and the last "
        f"{RECENT_FINISHED} finished ones.",
        labels=["rollout", "state"],
    )
    wave = GaugeMetricFamily(
        "stanch_cp_rollout_wave",
        "The wave the rollout is in (1 is the canary), or stopped in.",
        labels=["rollout"],
    )
    waves = GaugeMetricFamily(
        "stanch_cp_rollout_waves", "Waves in the rollout's plan.", labels=["rollout"]
    )
    started = GaugeMetricFamily(
        "stanch_cp_rollout_wave_started_timestamp_seconds",
        "When the active rollout's current wave started (its bake counts from here).",
        labels=["rollout"],
    )
    hosts = GaugeMetricFamily(
        "stanch_cp_rollout_hosts",
        "Hosts an active rollout touched, by status.",
        labels=["rollout", "status"],
    )
    gate_labels = ["rollout", "gate", "mode"]
    value = GaugeMetricFamily(
        "stanch_cp_rollout_gate_value",
        "An active rollout's gate value at its last evaluation (a count, or a ratio for "
        "failure_rate).",
        labels=gate_labels,
    )
    threshold = GaugeMetricFamily(
        "stanch_cp_rollout_gate_threshold",
        "The limit the gate value is compared to (a percent threshold already applied to the "
        "hosts updated so far); the gate fails above it.",
        labels=gate_labels,
    )
    passing = GaugeMetricFamily(
        "stanch_cp_rollout_gate_passing",
        "1 while the gate passes; an enforced gate at 0 rolls the rollout back.",
        labels=gate_labels,
    )
    for view in snap.rollouts:
        r = view.record
        for s in STATES:
            state.add_metric([r.id, s], float(r.state == s))
        wave.add_metric([r.id], float(r.wave + 1))
        waves.add_metric([r.id], float(len(r.waves)))
        if r.state not in ACTIVE:
            continue
        started.add_metric([r.id], r.wave_started_at)
        for status in HOST_STATUSES:
            hosts.add_metric([r.id, status], float(view.hosts.get(status, 0)))
        for g in r.gate_results:
            labels = [r.id, str(g.get("name", "")), str(g.get("mode", ""))]
            value.add_metric(labels, float(g.get("value", 0.0)))
            threshold.add_metric(labels, float(g.get("limit", 0.0)))
            passing.add_metric(labels, float(bool(g.get("passed", True))))
    yield from (state, wave, waves, started, hosts, value, threshold, passing)


def _gauge(name: str, text: str, value: float | bool | int) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))
