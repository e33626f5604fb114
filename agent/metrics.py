"""Prometheus metrics for the agent: event counters, a scrape-time state collector, and the
endpoint that serves them with ``/healthz`` and ``/readyz``.

Imported only when ``metrics.enabled`` is true (see ``agent.instrumentation``). Everything takes a
``CollectorRegistry``: the agent makes its own rather than using the process-global default, and
each test passes a fresh one, so two agents in one process never collide.

Naming follows the Prometheus conventions: ``stanch_`` prefix, ``_total`` counters, ``_seconds``
units, 0/1 gauges for states. Labels are bounded by the host's own policies, checks and sinks (tens,
not thousands); no label ever carries an execution id or a free-form message.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from agent import __version__
from agent.checks.base import CheckResult
from agent.instrumentation import AgentSnapshot, LoopHealth

log = logging.getLogger("stanch.agent.metrics")

CHECK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""From a /proc read (sub-millisecond) to a Nagios plugin near its 10 s default timeout."""
REMEDIATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Steps plus settle plus verification: seconds for a restart, many minutes for a cleanup."""


class AgentMetrics:
    """The event counters. Methods are cheap and thread-safe (prometheus_client locks each
    child), so the runner calls them inline from the main loop and the notifier thread."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.check_runs = Counter(
            "stanch_check_runs",
            "Check samples taken, by the status they produced.",
            ["policy", "check", "status"],
            registry=registry,
        )
        self.check_errors = Counter(
            "stanch_check_errors",
            "Check samples that failed (raised or overran their timeout) and reported UNKNOWN.",
            ["policy", "check"],
            registry=registry,
        )
        self.check_duration = Histogram(
            "stanch_check_duration_seconds",
            "How long each check sample took.",
            ["policy", "check"],
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "stanch_decisions",
            "Decisions taken while a policy fired, by outcome (act, suppress, observe, ...) "
            "and the guardrail reason.",
            ["policy", "outcome", "reason"],
            registry=registry,
        )
        self.remediations = Counter(
            "stanch_remediations",
            "Finished remediations by result: fixed, not_fixed, failed, interrupted.",
            ["policy", "result"],
            registry=registry,
        )
        self.remediation_duration = Histogram(
            "stanch_remediation_duration_seconds",
            "From the intent to the verified result.",
            ["policy"],
            buckets=REMEDIATION_BUCKETS,
            registry=registry,
        )
        self.notifications = Counter(
            "stanch_notifications",
            "Escalation delivery attempts by sink and result: delivered, retry, failed.",
            ["sink", "result"],
            registry=registry,
        )

    def observe_check(self, policy: str, check: str, result: CheckResult) -> None:
        self.check_runs.labels(policy, check, result.status.label).inc()
        if result.error is not None:
            self.check_errors.labels(policy, check).inc()
        self.check_duration.labels(policy, check).observe(max(0.0, result.duration))

    def observe_decision(self, policy: str, outcome: str, reason: str) -> None:
        self.decisions.labels(policy, outcome, reason).inc()

    def observe_remediation(self, policy: str, status: str, seconds: float | None) -> None:
        self.remediations.labels(policy, status).inc()
        if seconds is not None and seconds >= 0:
            self.remediation_duration.labels(policy).observe(seconds)

    def observe_notification(self, sink: str, result: str) -> None:
        self.notifications.labels(sink, result).inc()

    def close(self) -> None:
        """Nothing to release; ``agent.metrics_server.ServedMetrics`` also stops its server."""


class StateCollector(Collector):
    """Gauges read from a live ``AgentSnapshot`` at scrape time.

    ``stanch_state_collect_success`` follows node_exporter's ``..._collector_success``: when the
    snapshot fails (the journal is locked, the pause file is unreadable) the scrape still answers,
    with that gauge at 0 and the error logged, instead of a 500 that hides every other metric.
    """

    def __init__(self, snapshot: Callable[[], AgentSnapshot], health: LoopHealth) -> None:
        self.snapshot = snapshot
        self.health = health
        self.started = time.time()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # Dynamic: nothing to check for duplicates at registration.

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | InfoMetricFamily]:
        started = time.monotonic()
        age = self.health.age()
        yield _gauge(
            "stanch_loop_beat_age_seconds",
            "Seconds since the agent's main loop last turned (NaN while starting).",
            math.nan if age is None else age,
        )
        yield _gauge("stanch_loop_healthy", "1 when /healthz is OK.", self.health.healthy())
        yield _gauge(
            "stanch_agent_start_time_seconds", "When the agent started (Unix time).", self.started
        )
        try:
            snap = self.snapshot()
        except Exception as exc:  # The scrape must answer; say the state part failed.
            log.warning(
                "metrics_snapshot_failed",
                extra={"event": "metrics_snapshot_failed", "fields": {"error": str(exc)}},
            )
            ok = False
        else:
            ok = True
            yield from state_families(snap)
        yield _gauge("stanch_state_collect_success", "1 when the live state could be read.", ok)
        yield _gauge(
            "stanch_state_collect_duration_seconds",
            "How long reading the live state took.",
            time.monotonic() - started,
        )


def state_families(
    snap: AgentSnapshot,
) -> Iterator[GaugeMetricFamily | CounterMetricFamily | InfoMetricFamily]:
    info = InfoMetricFamily("stanch_agent", "The agent build and host identity.")
    info.add_metric([], {"version": __version__, "host": snap.host})
    yield info
    yield _gauge("stanch_policies_loaded", "Policies running on this host.", len(snap.policies))
    yield _gauge(
        "stanch_policy_load_errors", "Policy validation errors at the last load.", snap.load_errors
    )
    yield _gauge("stanch_storm_active", "1 while the storm guard holds automation.", snap.storm)
    yield _gauge("stanch_paused_all", "1 while the host-wide kill switch is on.", snap.paused_all)
    per_policy = {
        "stanch_policy_firing": ("1 while the policy's condition holds.", "firing"),
        "stanch_policy_paused": ("1 while the policy is paused (itself or host-wide).", "paused"),
        "stanch_remediation_running": ("1 while a remediation runs.", "running"),
        "stanch_breaker_open": ("1 while the policy's circuit breaker is open.", "breaker_open"),
        "stanch_breaker_failures": (
            "Remediations in a row that did not fix the problem.",
            "breaker_failures",
        ),
    }
    for name, (text, attr) in per_policy.items():
        family = GaugeMetricFamily(name, text, labels=["policy"])
        for p in snap.policies:
            family.add_metric([p.name], float(getattr(p, attr)))
        yield family
    modes = GaugeMetricFamily(
        "stanch_policy_mode", "1 for the policy's mode.", labels=["policy", "mode"]
    )
    for p in snap.policies:
        modes.add_metric([p.name, p.mode], 1.0)
    yield modes
    if snap.notifications is not None:
        queued = GaugeMetricFamily(
            "stanch_notifications_queued",
            "Notifications in the journal by status (pending: awaiting delivery or retry; "
            "failed: given up, kept for a week).",
            labels=["status"],
        )
        for status in ("pending", "failed"):
            queued.add_metric([status], float(snap.notifications.get(status, 0)))
        yield queued
    yield from bundle_families(snap)
    yield from channel_families(snap)


def bundle_families(snap: AgentSnapshot) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
    b = snap.bundle
    info = InfoMetricFamily("stanch_bundle", "The active signed policy bundle.")
    if b is not None:
        info.add_metric([], {"name": b.name, "digest": b.digest, "version": str(b.version)})
    yield info
    if b is None:
        return
    yield _gauge("stanch_bundle_version", "Version of the active bundle.", b.version)
    yield _gauge(
        "stanch_bundle_built_timestamp_seconds", "When the active bundle was built.", b.created
    )
    yield _gauge(
        "stanch_bundle_activated_timestamp_seconds",
        "When this host activated the bundle.",
        b.activated_at,
    )
    yield _gauge(
        "stanch_bundle_expires_timestamp_seconds", "When the active bundle expires.", b.expires
    )
    yield _gauge(
        "stanch_bundle_stale",
        "1 when the active bundle is past its expiry (it keeps running; a fresh one is overdue).",
        b.stale,
    )


def channel_families(
    snap: AgentSnapshot,
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    c = snap.channel
    yield _gauge("stanch_fleet_configured", "1 when a control plane is configured.", c is not None)
    if c is None:
        return
    yield _gauge("stanch_fleet_connected", "1 while the control-plane stream is up.", c.connected)
    if c.last_connected_at is not None:
        yield _gauge(
            "stanch_fleet_last_connected_timestamp_seconds",
            "When the stream was last up.",
            c.last_connected_at,
        )
    yield _gauge(
        "stanch_outbox_depth", "Reports waiting for the control plane's ack.", c.outbox_depth
    )
    dropped = CounterMetricFamily(
        "stanch_outbox_dropped", "Reports lost to the outbox bound (never silent)."
    )
    dropped.add_metric([], float(c.outbox_dropped))
    yield dropped


def _gauge(name: str, text: str, value: float | bool | int) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))
