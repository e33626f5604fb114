"""The agent as a real process: kill -9 in the middle of an action, a named failpoint right
after the intent, a SIGTERM drain and a SIGHUP reload. Nothing runs twice; nothing is lost."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import AgentHarness, ProcessTracker

ONE_RUN = {"cooldown": "0s", "budget": {"max": 1, "per": "1h"}}
"""Budget of one: after a restart, an interrupted attempt must suppress a second one."""


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_kill9_mid_action_then_restart_never_reruns(
    harness: AgentHarness, procs: ProcessTracker, tmp_path: Path
) -> None:
    """kill -9 while a step runs: restart marks it 'interrupted', counts it, never re-runs it."""
    marker = tmp_path / "marker"
    slow = harness.shell_step("slow-fix", f"echo ran >> {marker}; sleep 30", timeout="60s")
    policy = harness.flag_policy("crash", tmp_path / "flag", steps=[slow], guardrails=ONE_RUN)
    harness.write_policy("crash", policy)
    harness.spawn()
    harness.wait_for(lambda: len(lines(marker)) == 1, 20, what="the step to start",
                     describe=harness.describe)  # fmt: skip
    [running] = harness.executions("crash")
    assert running.status == "running" and running.finished_at is None

    harness.kill9()
    # Steps run in their own session: the agent's death does not take the step with it.
    step_procs = procs.find(str(marker))
    assert step_procs, "the step's process group outlives the agent"
    for proc in step_procs:
        procs.kill_tree(proc.pid)

    restarted = time.time()
    harness.spawn()
    recovered = harness.wait_decision("crash", "interrupted", "crash_recovery", timeout=20)
    assert recovered.execution_id == running.id
    assert "not re-run" in recovered.message
    # Recovery reports first, then marks the row (so a crash in between never loses the report).
    harness.wait_for(
        lambda: harness.executions("crash")[0].status == "interrupted", 10, what="row marked"
    )
    [execution] = harness.executions("crash")
    assert execution.id == running.id and execution.status == "interrupted"
    assert execution.finished_at is not None and "not re-run" in (execution.error or "")
    page = harness.wait_escalation("interrupted")
    assert page["policy"] == "crash" and page["correlation_id"] == running.id

    # Still firing, but the interrupted attempt spent the budget: suppressed, not re-run.
    harness.wait_decision("crash", "suppressed", "budget", after=restarted)
    harness.wait_for(
        lambda: harness.decisions("crash")[-1].repeat >= 3, 10, what="more evaluations"
    )
    assert lines(marker) == ["ran"]
    assert len(harness.executions("crash")) == 1
    assert ("act", "rule_matched") in harness.outcomes("crash")


def test_failpoint_after_intent_leaves_an_intent_that_becomes_interrupted(
    harness: AgentHarness, tmp_path: Path
) -> None:
    """STANCH_FAILPOINTS=crash_after_intent: the intent is on disk, the step never ran."""
    marker = tmp_path / "marker"
    step = harness.shell_step("fix", f"echo ran >> {marker}; touch {tmp_path / 'flag'}")
    policy = harness.flag_policy("fp", tmp_path / "flag", steps=[step], guardrails=ONE_RUN)
    harness.write_policy("fp", policy)
    proc = harness.spawn(env={"STANCH_FAILPOINTS": "crash_after_intent"})
    assert proc.wait(timeout=20) == 137
    [intent] = harness.executions("fp")
    assert intent.status == "running" and intent.steps == []
    assert not marker.exists()

    restarted = time.time()
    harness.spawn()
    recovered = harness.wait_decision("fp", "interrupted", "crash_recovery", timeout=20)
    assert recovered.execution_id == intent.id
    harness.wait_for(
        lambda: harness.executions("fp")[0].status == "interrupted", 10, what="row marked"
    )
    [execution] = harness.executions("fp")
    assert execution.status == "interrupted"
    harness.wait_decision("fp", "suppressed", "budget", after=restarted)
    assert not marker.exists()


def test_sigterm_drains_a_running_remediation(harness: AgentHarness, tmp_path: Path) -> None:
    """SIGTERM mid-remediation: the agent lets it finish, records 'fixed', exits 0."""
    flag = tmp_path / "flag"
    step = harness.shell_step("slow-fix", f"sleep 1; touch {flag}")
    harness.write_policy("drain", harness.flag_policy("drain", flag, steps=[step]))
    proc = harness.spawn()
    harness.wait_executions("drain", 1, "running", timeout=20)

    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert proc.wait(timeout=20) == 0
    assert time.monotonic() - started < 10
    [execution] = harness.executions("drain")
    assert execution.status == "fixed" and execution.steps[0]["ok"]
    assert harness.outcomes("drain")[-1] == ("fixed", "verification")
    assert ("interrupted", "crash_recovery") not in harness.outcomes("drain")
    assert harness.journal.agent_state()["stopped_at"] is not None


def test_sighup_reloads_policies(harness: AgentHarness, tmp_path: Path) -> None:
    """SIGHUP makes a running agent pick up a policy file added after it started."""
    harness.write_policy("first", harness.flag_policy("first", tmp_path / "first"))
    proc = harness.spawn()
    harness.wait_executions("first", 1, "fixed", timeout=20)
    harness.write_policy("second", harness.flag_policy("second", tmp_path / "second"))
    proc.send_signal(signal.SIGHUP)
    harness.wait_executions("second", 1, "fixed", timeout=10)
    assert proc.poll() is None
