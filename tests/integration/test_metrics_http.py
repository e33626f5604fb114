"""The metrics endpoint for real: an HTTP server on a loopback port, scraped over TCP, checked by
``promtool`` when it is installed, and the scrape-time snapshot read from a running agent."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agent.clock import FakeClock
from agent.instrumentation import (
    AgentSnapshot,
    ChannelSnapshot,
    MetricsConfig,
    PolicySnapshot,
    open_metrics,
    snapshot_agent,
)
from agent.sdnotify import Watchdog

if TYPE_CHECKING:
    from conftest import AgentHarness

pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")
from agent.metrics_server import ServedMetrics  # noqa: E402

SNAPSHOT = AgentSnapshot(
    host="web-17",
    policies=(PolicySnapshot("web", "auto", True, False, False, 1, False),),
    notifications={"pending": 1},
    channel=ChannelSnapshot(True, 3, 0, 1_700_000_000.0),
)


def get(url: str, accept: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def served(clock: FakeClock) -> Iterator[tuple[ServedMetrics, Watchdog, str]]:
    dog = Watchdog(None, None, clock, stale_after=5.0)
    metrics = open_metrics(MetricsConfig(True, "127.0.0.1", 0), lambda: SNAPSHOT, dog)
    assert isinstance(metrics, ServedMetrics) and metrics.server is not None
    yield metrics, dog, f"http://127.0.0.1:{metrics.server.port}"
    metrics.close()


def test_metrics_are_scraped_over_http(served: tuple[ServedMetrics, Watchdog, str]) -> None:
    metrics, dog, base = served
    dog.beat()
    metrics.observe_decision("web", "acted", "act")
    status, content_type, body = get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=")
    assert 'stanch_decisions_total{outcome="acted",policy="web",reason="act"} 1.0' in body
    assert 'stanch_policy_firing{policy="web"} 1.0' in body
    assert "stanch_outbox_depth 3.0" in body
    assert "process_resident_memory_bytes " in body  # The agent's own footprint.
    assert "_created" not in body

    status, content_type, body = get(base + "/metrics", "application/openmetrics-text")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_health_and_readiness_follow_the_loop(
    served: tuple[ServedMetrics, Watchdog, str], clock: FakeClock
) -> None:
    _, dog, base = served
    # Starting: alive (do not restart a slow crash recovery) but not ready.
    assert get(base + "/healthz")[0] == 200
    status, _, body = get(base + "/readyz")
    assert status == 503 and json.loads(body)["status"] == "starting"

    dog.beat()
    clock.advance(1.0)
    for path in ("/healthz", "/readyz"):
        status, content_type, body = get(base + path)
        assert (status, content_type) == (200, "application/json")
        assert json.loads(body) == {"status": "ok", "loop_age_seconds": 1.0}

    clock.advance(10.0)  # The loop is wedged.
    status, _, body = get(base + "/healthz")
    assert status == 503
    assert json.loads(body)["reason"] == "the main loop has not turned for 11.0s (limit 5s)"
    assert get(base + "/readyz")[0] == 503
    assert get(base + "/nope")[0] == 404


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_exposition(served: tuple[ServedMetrics, Watchdog, str]) -> None:
    from agent.checks.base import CheckResult, Status

    metrics, dog, base = served
    dog.beat()
    metrics.observe_check("web", "nginx", CheckResult("nginx", Status.CRITICAL, {}, "", None, 0.01))
    metrics.observe_remediation("web", "fixed", 4.0)
    metrics.observe_notification("oncall", "delivered")
    body = get(base + "/metrics")[2]
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", "promtool lint warnings"


def test_a_taken_port_does_not_stop_the_agent(clock: FakeClock) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = MetricsConfig(True, "127.0.0.1", port)
        metrics = open_metrics(config, lambda: SNAPSHOT, Watchdog(None, None, clock))
        assert isinstance(metrics, ServedMetrics) and metrics.server is None
        metrics.observe_decision("web", "acted", "act")  # Still counts; just not served.
        metrics.close()


def test_snapshot_of_a_running_agent(harness: AgentHarness, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    slow = {"cooldown": "1h", "budget": {"max": 1, "per": "1h"}}
    verify = harness.SHORT_VERIFY
    harness.write_policy(
        "web", harness.flag_policy("web-flag", flag, fix=False, guardrails=slow, verify=verify)
    )
    harness.write_policy("ok", harness.flag_policy("always-ok", tmp_path, fix=False))
    agent = harness.start()
    harness.wait_decision("web-flag", "act")
    harness.cli("pause", "--policy", "always-ok")
    agent.journal.set_breaker("web-flag", 2, 1_700_000_000.0)

    def snap() -> AgentSnapshot:
        return snapshot_agent(
            agent,
            channel=lambda: ChannelSnapshot(False, 5, 1),
            notifications=lambda: {"pending": 0, "failed": 0},
        )

    def firing() -> AgentSnapshot | None:
        s = snap()
        return s if any(p.firing for p in s.policies) else None

    found = harness.wait_for(firing, 10, what="the snapshot to show web-flag firing")
    by_name = {p.name: p for p in found.policies}
    assert set(by_name) == {"web-flag", "always-ok"}
    assert by_name["web-flag"].firing and by_name["web-flag"].breaker_open
    assert by_name["web-flag"].breaker_failures == 2 and not by_name["web-flag"].paused
    assert by_name["always-ok"].paused and not by_name["always-ok"].firing
    assert by_name["always-ok"].mode == "auto"
    assert found.host == "test-host" and not found.paused_all and found.bundle is None
    assert found.channel == ChannelSnapshot(False, 5, 1)

    harness.cli("pause")
    assert snapshot_agent(agent).paused_all
    assert all(p.paused for p in snapshot_agent(agent).policies)


def test_the_active_bundle_is_read_from_its_pointer(harness: AgentHarness, tmp_path: Path) -> None:
    from agent.bundle.pointer import ActivePointer
    from agent.instrumentation import read_bundle

    harness.write_policy("web", harness.flag_policy("web-flag", tmp_path, fix=False))
    agent = harness.start()
    assert read_bundle(agent) is None
    bundles = harness.state_dir / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    ActivePointer(
        digest="ab" * 32,
        payload_digest="cd" * 32,
        name="prod-policies",
        version=42,
        created=1_700_000_000.0,
        expires=1_700_086_400.0,  # Long past: stale, and still running.
        activated_at=1_700_000_100.0,
        signers=("ops-1",),
        high_water_version=42,
        high_water_payload="cd" * 32,
    ).write(bundles)
    bundle = read_bundle(agent)
    assert bundle is not None
    assert (bundle.name, bundle.version, bundle.digest) == ("prod-policies", 42, "ab" * 32)
    assert bundle.stale and bundle.expires == 1_700_086_400.0
