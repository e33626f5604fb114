"""One bad thing never stalls the rest: a hanging step, a malformed policy file, a hanging or
broken check. Each is contained, reported, and the other policies keep remediating."""

from __future__ import annotations

import secrets
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import AgentHarness, FakeService, ProcessTracker

BAD_POLICY = textwrap.dedent(
    """\
    apiVersion: stanch.dev/v1
    kind: Policy
    metadata: {name: typo}
    spec:
      checks:
        svc: {type: process, pidfile: /run/typo.pid, nmae: nginx}
      rule:
        when: {check: svc, metric: count, op: "<", value: 1}
      remediation:
        steps: [{name: restart, run: ["true"]}]
    """
)


def service_policy(h: AgentHarness, svc: FakeService, name: str = "svc-down") -> str:
    return h.policy_yaml(
        name,
        checks={"svc": h.process_check(svc.pidfile)},
        when={"check": "svc", **h.DOWN},
        steps=[h.step("restart", svc.command)],
        guardrails={"cooldown": "0s", "budget": {"max": 10, "per": "1h"}},
    )


def seen_up(h: AgentHarness, policy: str = "svc-down") -> Any:
    """Wait until the agent has sampled the service as up (so it follows its pid)."""

    def up() -> bool:
        checks = h.journal.policy_states().get(policy, {}).get("checks", {})
        return checks.get("svc", {}).get("status") == "ok"

    return h.wait_for(up, 10, what=f"{policy} to see the service up")


def test_hanging_steps_are_killed_with_their_process_group(
    harness: AgentHarness, procs: ProcessTracker, tmp_path: Path
) -> None:
    """`sleep 100` and `sh -c 'sleep & sleep'` with a 1s timeout: killed, children included."""
    base = f"100.{secrets.randbelow(10**5):05d}"
    alone, background, foreground = (f"{base}{i}" for i in range(1, 4))
    procs.marks |= {alone, background, foreground}
    steps = [
        harness.step("hang", ["sleep", alone], timeout="1s", continue_on_error=True),
        harness.shell_step("hang-with-child", f"sleep {background} & sleep {foreground}",
                           timeout="1s"),
    ]  # fmt: skip
    once = {"cooldown": "1h"}  # one execution: a second would start the same sleeps again
    harness.write_policy("hang", harness.flag_policy("hang", tmp_path / "flag", steps=steps,
                         verify=harness.SHORT_VERIFY, guardrails=once))  # fmt: skip

    def sleeping(token: str) -> list[Any]:
        return [p for p in procs.find(token) if p.info["cmdline"] == ["sleep", token]]

    harness.start()
    harness.wait_for(lambda: sleeping(alone), 10, what="the first hanging step")
    harness.wait_for(lambda: sleeping(background) and sleeping(foreground), 10,
                     what="the shell and its background child")  # fmt: skip
    [execution] = harness.wait_executions("hang", 1, "failed", timeout=20)
    for token in (alone, background, foreground):
        assert sleeping(token) == [], f"sleep {token} survived its step's timeout"

    assert [s["name"] for s in execution.steps] == ["hang", "hang-with-child"]
    for record in execution.steps:
        assert record["exit_code"] is None and not record["ok"]
        assert record["error"] == "timed out after 1s; process group killed"
        assert 1000 <= record["duration_ms"] < 5000
    failed = harness.wait_decision("hang", "failed", "verification")
    assert failed.message.startswith(
        "step 'hang-with-child' timed out after 1s; process group killed; still flag.exists"
    )


def test_bad_policy_rejected_while_good_ones_run(
    harness: AgentHarness, service: FakeService
) -> None:
    """A malformed file is rejected with file: path: problem; the good policy remediates, and
    keeps running in its last good version when its own file breaks on reload."""
    service.start()
    harness.write_policy("good", service_policy(harness, service))
    bad = harness.write_policy("bad", BAD_POLICY)
    agent = harness.start()

    errors = harness.wait_for(lambda: harness.journal.agent_state().get("load_errors"), 10,
                              what="load errors in the agent state")  # fmt: skip
    assert f"{bad}: spec.checks.svc.nmae: unknown key 'nmae'" in "\n".join(errors)
    assert harness.journal.agent_state()["policies"] == ["svc-down"]
    assert f"policy error: {bad}: spec.checks.svc.nmae: unknown key" in harness.cli("status").stdout
    checked = harness.cli("check", str(harness.policies_dir), check=False)
    assert checked.returncode == 1
    assert f"{bad}: spec.checks.svc.nmae: unknown key 'nmae'" in checked.stderr

    seen_up(harness)
    service.kill()
    harness.wait_executions("svc-down", 1, "fixed")

    # Break the good file, and the bad one differently; reload.
    good = harness.write_policy("good", "apiVersion: stanch.dev/v1\nspec: [unclosed\n")
    harness.write_policy("bad", BAD_POLICY.replace("nmae: nginx", "interval: banana"))
    agent.request_reload()
    harness.wait_for(lambda: any(e.startswith(f"{good}: line") for e in agent.load_errors), 10,
                     what="the reload to report the broken good file")  # fmt: skip
    assert any(f"{bad}: spec.checks.svc.interval" in e for e in agent.load_errors)
    assert list(agent.policies) == ["svc-down"], "the last good version keeps running"

    seen_up(harness)
    service.kill()
    executions = harness.wait_executions("svc-down", 2, "fixed")
    assert len(executions) == 2 and service.alive()


def test_status_shows_new_load_errors_soon_after_reload(
    harness: AgentHarness, tmp_path: Path
) -> None:
    """After a reload, `stanch-agent status` reports the new load error within a few seconds."""
    harness.write_policy("ok", harness.flag_policy("ok", tmp_path / "flag"))
    agent = harness.start()
    harness.wait_for(lambda: "ok" in harness.journal.agent_state().get("policies", []), 10,
                     what="the first status snapshot")  # fmt: skip
    bad = harness.write_policy("bad", BAD_POLICY)
    agent.request_reload()
    harness.wait_for(lambda: agent.load_errors, 5, what="the reload")
    harness.wait_for(lambda: harness.journal.agent_state().get("load_errors"), 3,
                     what="the status to show the new load error")  # fmt: skip
    assert str(bad) in harness.cli("status").stdout


def test_hanging_and_broken_checks_do_not_stall_other_policies(
    harness: AgentHarness, service: FakeService, tmp_path: Path
) -> None:
    """A check that hangs past its timeout and one that cannot run are UNKNOWN; the loop goes
    on and another policy still remediates within seconds."""
    hang = tmp_path / "hang-plugin.sh"
    hang.write_text("#!/bin/sh\nsleep 30\n")
    hang.chmod(0o755)
    echo = [harness.step("noop", ["true"])]
    stuck = {"type": "command", "run": [str(hang)], "interval": "1s", "timeout": "1s",
             "plugin_timeout": "30s"}  # fmt: skip
    missing = {"type": "command", "run": [str(tmp_path / "no-such-plugin")], "interval": "1s"}
    harness.write_policy(
        "stuck",
        harness.policy_yaml(
            "stuck", checks={"hang": stuck}, when={"check": "hang", "state": "critical"}, steps=echo
        ),
    )
    harness.write_policy("broken", harness.policy_yaml(
        "broken", checks={"gone": missing}, when={"check": "gone", "state": "critical"},
        steps=echo))  # fmt: skip
    harness.write_policy("svc", service_policy(harness, service))
    service.start()
    harness.start()

    def check_state(policy: str, check: str) -> dict[str, Any]:
        state = harness.journal.policy_states().get(policy, {})
        result: dict[str, Any] = state.get("checks", {}).get(check, {})
        return result

    harness.wait_for(lambda: check_state("stuck", "hang").get("status") == "unknown", 10,
                     what="the hanging check to time out")  # fmt: skip
    assert "did not finish within its 1s timeout" in check_state("stuck", "hang")["error"]
    gone = harness.wait_for(lambda: check_state("broken", "gone").get("error"), 10,
                            what="the broken check's error")  # fmt: skip
    assert "cannot run" in gone and check_state("broken", "gone")["status"] == "unknown"

    for round_ in (1, 2):
        seen_up(harness)
        killed = time.monotonic()
        service.kill()
        harness.wait_executions("svc-down", round_, "fixed", timeout=10)
        assert time.monotonic() - killed < 5
    assert harness.executions("stuck") == [] and harness.executions("broken") == []
