"""A real agent process with metrics on: /readyz turns ready after start-up, /metrics shows the
policy firing and the remediation it ran, and the exposition passes promtool."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import AgentHarness

pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_a_running_agent_serves_metrics_and_probes(harness: AgentHarness, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    harness.configure(metrics={"enabled": True, "listen": f"127.0.0.1:{port}"})
    flag = tmp_path / "flag"
    harness.write_policy("web", harness.flag_policy("web-flag", flag))
    harness.spawn()

    harness.wait_for(lambda: get(base + "/readyz")[0] == 200, 20, what="/readyz to turn 200")
    assert json.loads(get(base + "/healthz")[1])["status"] == "ok"
    harness.wait_executions("web-flag", 1, "fixed")

    def scraped() -> str | None:
        body = get(base + "/metrics")[1]
        return (
            body
            if 'stanch_remediations_total{policy="web-flag",result="fixed"} 1.0' in body
            else None
        )

    body = harness.wait_for(scraped, 10, what="the fixed remediation in /metrics")
    assert "stanch_policies_loaded 1.0" in body
    assert 'stanch_decisions_total{outcome="act",policy="web-flag",reason="rule_matched"}' in body
    assert 'stanch_check_runs_total{check="flag",policy="web-flag",status="ok"}' in body
    assert 'stanch_notifications_queued{status="pending"}' in body
    assert "stanch_fleet_configured 0.0" in body
    promtool = shutil.which("promtool")
    if promtool:
        done = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
