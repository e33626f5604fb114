"""Agent metrics with a fresh CollectorRegistry per test: counters, the scrape-time state
collector, the config keys, and the rule that prometheus_client loads only when enabled."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.checks.base import CheckResult, Status
from agent.clock import FakeClock
from agent.instrumentation import (
    AgentSnapshot,
    BundleSnapshot,
    ChannelSnapshot,
    MetricsConfig,
    NoMetrics,
    PolicySnapshot,
    open_metrics,
    parse_metrics,
    split_listen,
)
from agent.policy.fields import ErrorSink, Fields
from agent.sdnotify import Watchdog

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="prometheus-client is not installed (pip install -e '.[dev]')"
)
from prometheus_client import CollectorRegistry  # noqa: E402

from agent.metrics import AgentMetrics, StateCollector  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

WEB = PolicySnapshot("web", "auto", True, True, False, 2, True)
DISK = PolicySnapshot("disk", "observe", False, False, True, 0, False)
SNAPSHOT = AgentSnapshot(
    host="web-17",
    policies=(WEB, DISK),
    paused_all=False,
    storm=True,
    load_errors=1,
    bundle=BundleSnapshot("prod", "ab12", 7, 100.0, 200.0, 150.0, stale=True),
    notifications={"pending": 3, "failed": 1},
    channel=ChannelSnapshot(False, 12, 2, 90.0),
)


def collected(snapshot: AgentSnapshot | Exception, beat: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    dog = Watchdog(None, None, FakeClock())
    if beat:
        dog.beat()

    def snap() -> AgentSnapshot:
        if isinstance(snapshot, Exception):
            raise snapshot
        return snapshot

    registry.register(StateCollector(snap, dog))
    return registry


def test_check_runs_errors_and_durations() -> None:
    registry = CollectorRegistry()
    m = AgentMetrics(registry)
    m.observe_check("web", "nginx", CheckResult("nginx", Status.OK, {}, "", None, 0.003))
    m.observe_check("web", "nginx", CheckResult("nginx", Status.UNKNOWN, {}, "", "timed out", 10))
    get = registry.get_sample_value
    assert get("stanch_check_runs_total", {"policy": "web", "check": "nginx", "status": "ok"}) == 1
    unknown = {"policy": "web", "check": "nginx", "status": "unknown"}
    assert get("stanch_check_runs_total", unknown) == 1
    assert get("stanch_check_errors_total", {"policy": "web", "check": "nginx"}) == 1
    labels = {"policy": "web", "check": "nginx"}
    assert get("stanch_check_duration_seconds_count", labels) == 2
    assert get("stanch_check_duration_seconds_sum", labels) == pytest.approx(10.003)
    assert get("stanch_check_duration_seconds_bucket", {**labels, "le": "0.005"}) == 1


def test_decisions_remediations_and_notifications() -> None:
    registry = CollectorRegistry()
    m = AgentMetrics(registry)
    m.observe_decision("web", "suppress", "cooldown")
    m.observe_decision("web", "suppress", "cooldown")
    m.observe_remediation("web", "fixed", 12.5)
    m.observe_remediation("web", "interrupted", None)  # Crash recovery: no duration known.
    m.observe_notification("oncall", "retry")
    get = registry.get_sample_value
    cooldown = {"policy": "web", "outcome": "suppress", "reason": "cooldown"}
    assert get("stanch_decisions_total", cooldown) == 2
    assert get("stanch_remediations_total", {"policy": "web", "result": "fixed"}) == 1
    assert get("stanch_remediations_total", {"policy": "web", "result": "interrupted"}) == 1
    assert get("stanch_remediation_duration_seconds_count", {"policy": "web"}) == 1
    assert get("stanch_notifications_total", {"sink": "oncall", "result": "retry"}) == 1


def test_state_is_read_from_the_snapshot_at_scrape_time() -> None:
    get = collected(SNAPSHOT).get_sample_value
    assert get("stanch_agent_info", {"host": "web-17", "version": "0.1.0"}) == 1
    assert get("stanch_policies_loaded") == 2
    assert get("stanch_policy_load_errors") == 1
    assert get("stanch_storm_active") == 1 and get("stanch_paused_all") == 0
    assert get("stanch_policy_firing", {"policy": "web"}) == 1
    assert get("stanch_policy_firing", {"policy": "disk"}) == 0
    assert get("stanch_policy_paused", {"policy": "disk"}) == 1
    assert get("stanch_remediation_running", {"policy": "web"}) == 1
    assert get("stanch_breaker_open", {"policy": "web"}) == 1
    assert get("stanch_breaker_failures", {"policy": "web"}) == 2
    assert get("stanch_policy_mode", {"policy": "disk", "mode": "observe"}) == 1
    assert get("stanch_notifications_queued", {"status": "pending"}) == 3
    assert get("stanch_notifications_queued", {"status": "failed"}) == 1
    bundle = {"name": "prod", "digest": "ab12", "version": "7"}
    assert get("stanch_bundle_info", bundle) == 1
    assert get("stanch_bundle_version") == 7 and get("stanch_bundle_stale") == 1
    assert get("stanch_bundle_expires_timestamp_seconds") == 200
    assert get("stanch_fleet_configured") == 1 and get("stanch_fleet_connected") == 0
    assert get("stanch_outbox_depth") == 12
    assert get("stanch_outbox_dropped_total") == 2
    assert get("stanch_state_collect_success") == 1
    assert get("stanch_loop_healthy") == 1 and get("stanch_loop_beat_age_seconds") == 0


def test_a_standalone_agent_reports_no_bundle_and_no_channel() -> None:
    get = collected(AgentSnapshot(host="h")).get_sample_value
    assert get("stanch_fleet_configured") == 0
    assert get("stanch_fleet_connected") is None and get("stanch_outbox_depth") is None
    assert get("stanch_bundle_version") is None
    assert get("stanch_notifications_queued", {"status": "pending"}) is None


def test_a_failing_snapshot_still_answers_the_scrape() -> None:
    get = collected(RuntimeError("database is locked"), beat=False).get_sample_value
    assert get("stanch_state_collect_success") == 0
    assert get("stanch_loop_healthy") == 0
    age = get("stanch_loop_beat_age_seconds")
    assert age is not None and math.isnan(age)  # Still starting.
    assert get("stanch_policies_loaded") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:80", ("localhost", 80)),
        ("::1:9464", (None, None)),
        ("127.0.0.1", (None, None)),
        (":9464", (None, None)),
        ("127.0.0.1:99999", (None, None)),
        ("127.0.0.1:http", (None, None)),
    ],
)
def test_split_listen(text: str, expected: tuple[str | None, int | None]) -> None:
    assert split_listen(text) == expected


def parse(text: str) -> tuple[MetricsConfig, list[str]]:
    sink = ErrorSink("agent.yaml")
    config = parse_metrics(Fields(yaml.safe_load(text), "metrics", sink))
    return config, [str(e) for e in sink.errors]


def test_metrics_config() -> None:
    assert parse("{}") == (MetricsConfig(False, "127.0.0.1", 9464), [])
    assert parse("{enabled: true, listen: '[::1]:9100'}") == (MetricsConfig(True, "::1", 9100), [])
    assert MetricsConfig(True, "::1", 9100).listen == "[::1]:9100"
    _, errors = parse("{enabled: true, listen: 9464, lisen: x}")
    assert errors == [
        "agent.yaml: metrics.listen: expected a string, got int 9464",
        "agent.yaml: metrics.lisen: unknown key 'lisen' (known keys: enabled, listen)",
    ]
    _, errors = parse("{listen: 'localhost'}")
    assert errors == [
        "agent.yaml: metrics.listen: expected HOST:PORT such as 127.0.0.1:9464 or [::1]:9464"
    ]


def test_disabled_metrics_are_a_no_op() -> None:
    dog = Watchdog(None, None)
    instruments = open_metrics(MetricsConfig(), lambda: AgentSnapshot(host="h"), dog)
    assert isinstance(instruments, NoMetrics)
    instruments.observe_check("p", "c", CheckResult("c", Status.OK))
    instruments.observe_decision("p", "act", "ok")
    instruments.observe_remediation("p", "fixed", 1.0)
    instruments.observe_notification("s", "delivered")
    instruments.close()


def test_prometheus_client_loads_only_when_metrics_are_enabled() -> None:
    code = (
        "import json, sys\n"
        "import agent.instrumentation, agent.sdnotify\n"
        "print(json.dumps('prometheus_client' in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) is False
