"""The scrape-time collector: gauges for the live plane, read from a :class:`PlaneSnapshot`.

Part of the control plane's metrics (``controlplane.metrics`` re-exports it;
``controlplane.metrics_server`` registers it); imported only with ``--metrics-listen``. Its
labels are fixed sets in the code (states, host statuses, tasks, pause sources, gates and
modes) or were bounded when the snapshot was taken (``controlplane.metrics_snapshot``); the
enrollment, renewal and operator authentication families carry only the fixed results and
methods of ``controlplane.security_events``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from agent import __version__
from controlplane.metrics_snapshot import RECENT_FINISHED, STATES, PlaneSnapshot
from controlplane.rollouts import ACTIVE
from controlplane.security_metrics import security_families

log = logging.getLogger("stanch.cp.metrics")

HOST_STATUSES = ("assigned", "applied", "failed", "rolled_back", "stranded")
SNAPSHOT_TIMEOUT = 5.0
"""A scrape waits this long for the event loop and the storage thread; then it answers with
``stanch_cp_state_collect_success 0`` instead of hanging Prometheus' scrape."""


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
