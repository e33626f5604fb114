"""`stanch-agent explain/status/history` (real subprocesses) tell an operator, in plain words,
what a running agent did and why it did not act."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import AgentHarness


def test_explain_status_history_say_why(harness: AgentHarness, tmp_path: Path) -> None:
    """After a fix and a cooldown suppression, the CLI shows both in plain words."""
    flag = tmp_path / "flag"
    guardrails = {"cooldown": "1h", "budget": {"max": 3, "per": "1h"}}
    harness.write_policy("web", harness.flag_policy("web-flag", flag, guardrails=guardrails))
    harness.start()
    [execution] = harness.wait_executions("web-flag", 1, "fixed")
    harness.wait_decision("web-flag", "fixed")
    flag.unlink()
    harness.wait_decision("web-flag", "suppressed", "cooldown")
    harness.wait_for(lambda: harness.journal.policy_states()["web-flag"]["firing"], 5,
                     what="the status snapshot to show the policy firing")  # fmt: skip

    explain = harness.cli("explain", "web-flag").stdout
    assert "suppressed: cooldown until " in explain
    assert "fixed: condition cleared" in explain
    assert f"step create-flag: touch {flag} -> ok" in explain
    assert "acted: running 1 step (create-flag)" in explain
    assert "because: flag.exists = 0 < 1" in explain
    assert "Runbook: https://runbooks.example.com/web-flag" in explain
    assert "FIRING now" in explain

    status = harness.cli("status").stdout
    assert "agent: host test-host" in status and "running" in status
    [row] = [line for line in status.splitlines() if line.startswith("web-flag ")]
    assert "FIRING" in row and "flag=" in row

    history = harness.cli("history").stdout
    [line] = [line for line in history.splitlines() if execution.id in line]
    assert "web-flag" in line and "fixed" in line
    records = json.loads(harness.cli("history", "--json", "--policy", "web-flag").stdout)
    assert [(r["id"], r["status"]) for r in records] == [(execution.id, "fixed")]

    unknown = harness.cli("explain", "no-such-policy", check=False)
    assert unknown.returncode == 1
