"""Detection, remediation and verification end to end, with a real daemon and a real agent."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import AgentHarness, FakeService


def service_policy(h: AgentHarness, svc: FakeService, name: str = "svc-down") -> str:
    return h.policy_yaml(
        name,
        checks={"svc": h.process_check(svc.pidfile)},
        when={"check": "svc", **h.DOWN},
        steps=[h.step("restart", svc.command)],
    )


def test_killed_service_is_restarted_and_verified(
    harness: AgentHarness, service: FakeService
) -> None:
    """A SIGKILLed daemon is restarted by the policy's step and recorded act -> fixed."""
    old = service.start()
    harness.write_policy("svc", service_policy(harness, service))
    harness.start()
    harness.wait_for(
        lambda: harness.journal.policy_states().get("svc-down", {}).get("checks"),
        what="the first sample of the service",
    )
    service.kill()

    [execution] = harness.wait_executions("svc-down", 1, "fixed")
    new = service.pid()
    assert new is not None and new != old and service.alive()
    assert service.start_count() == 2
    assert execution.steps[0]["name"] == "restart" and execution.steps[0]["ok"]

    decisions = harness.decisions("svc-down")
    act = next(d for d in decisions if d.outcome == "act")
    assert act.reason == "rule_matched" and act.message == "running 1 step (restart)"
    assert act.observed["svc.count"] == 0 and "svc.count = 0 < 1" in act.why[0]
    fixed = next(d for d in decisions if d.outcome == "fixed")
    assert fixed.reason == "verification" and fixed.execution_id == execution.id
    assert "condition cleared" in fixed.message and fixed.id > act.id
    assert harness.escalations() == []


def test_step_that_does_not_fix_escalates_with_what_was_tried(
    harness: AgentHarness, tmp_path: Path
) -> None:
    """A step that changes nothing is 'not_fixed', and the page says what was tried."""
    harness.write_policy(
        "noop",
        harness.flag_policy("noop-fix", tmp_path / "flag", fix=False, verify=harness.SHORT_VERIFY),
    )
    harness.start()

    [execution] = harness.wait_executions("noop-fix", 1, "not_fixed")
    not_fixed = harness.wait_decision("noop-fix", "not_fixed", "verification")
    assert not_fixed.message.startswith("still flag.exists = 0 < 1 after")
    assert not_fixed.execution_id == execution.id

    page = harness.wait_escalation("not_fixed")
    assert page["policy"] == "noop-fix" and page["host"] == "test-host"
    assert page["runbook"] == "https://runbooks.example.com/noop-fix"
    assert page["correlation_id"] == execution.id
    assert "still flag.exists = 0 < 1" in page["message"]
    [tried] = page["tried"]
    assert tried["name"] == "try-something" and tried["exit_code"] == 0
    assert tried["argv"] == ["echo", "tried to fix noop-fix"]
    assert tried["stdout"] == "tried to fix noop-fix\n"


def test_watched_pid_death_triggers_remediation_at_once(
    harness: AgentHarness, service: FakeService
) -> None:
    """With a 10 s check interval, a watched process's death starts the fix in well under 1 s."""
    service.start()
    harness.write_policy(
        "svc",
        harness.policy_yaml(
            "svc-down",
            checks={"svc": harness.process_check(service.pidfile, interval="10s")},
            when={"check": "svc", **harness.DOWN},
            steps=[harness.step("restart", service.command)],
        ),
    )
    agent = harness.start()
    harness.wait_for(
        lambda: agent.policies.get("svc-down") and agent.policies["svc-down"].checks["svc"].pids,
        10,
        what="the agent to watch the service's pid",
    )
    killed = time.time()
    service.kill()
    [execution] = harness.wait_executions("svc-down", 1, timeout=5)
    latency = execution.started_at - killed
    assert 0 <= latency < 1.0, f"remediation started {latency:.3f}s after the kill"
    harness.wait_executions("svc-down", 1, "fixed")
