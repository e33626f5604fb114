"""Human controls over a real agent: the kill switch, maintenance windows, observe and approve
modes. Pause, resume and approve go through the real `stanch-agent` CLI in a subprocess."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import AgentHarness


def test_pause_all_survives_restart_until_resumed(harness: AgentHarness, tmp_path: Path) -> None:
    """`pause --for 1h` suppresses ('paused'), survives an agent restart, `resume` lifts it."""
    flag = tmp_path / "flag"
    flag.touch()
    harness.write_policy("ks", harness.flag_policy("ks", flag))
    harness.start()
    out = harness.cli("pause", "--for", "1h", "--reason", "db migration").stdout
    assert out.strip() == "paused all policies for 1h"
    flag.unlink()
    paused = harness.wait_decision("ks", "suppressed", "paused")
    assert re.fullmatch(
        r"suppressed: kill switch: paused all policies until \d\d:\d\d:\d\d UTC "
        r"\(db migration\)",
        paused.message,
    )
    assert paused.until is not None and 3590 < paused.until - time.time() <= 3600

    harness.stop()
    restarted = time.time()
    harness.start()
    harness.wait_decision("ks", "suppressed", "paused", after=restarted)
    assert harness.executions("ks") == []
    assert "PAUSED: all policies until" in harness.cli("status").stdout

    assert harness.cli("resume").stdout.strip() == "resumed all policies"
    harness.wait_executions("ks", 1, "fixed")
    assert flag.exists()


def test_pause_one_policy(harness: AgentHarness, tmp_path: Path) -> None:
    """`pause --policy P` stops only P; the other policy still remediates."""
    for name in ("held", "free"):
        harness.write_policy(name, harness.flag_policy(name, tmp_path / name))
    harness.cli("pause", "--policy", "held")
    harness.start()
    harness.wait_executions("free", 1, "fixed")
    paused = harness.wait_decision("held", "suppressed", "paused")
    assert paused.message == "suppressed: kill switch: paused held until resumed"
    assert paused.until is None
    assert harness.executions("held") == []

    harness.cli("resume", "--policy", "held")
    harness.wait_executions("held", 1, "fixed")


def test_maintenance_window_suppresses(harness: AgentHarness, tmp_path: Path) -> None:
    """Inside an absolute maintenance window the policy does not act: 'maintenance until'."""
    now = datetime.now(UTC)
    end = now + timedelta(hours=1)
    window = {"name": "db-upgrade", "from": (now - timedelta(minutes=1)).isoformat(),
              "to": end.isoformat()}  # fmt: skip
    guardrails = {"cooldown": "0s", "maintenance": [window]}
    harness.write_policy("mw", harness.flag_policy("mw", tmp_path / "flag", guardrails=guardrails))
    harness.start()
    row = harness.wait_decision("mw", "suppressed", "maintenance")
    assert row.message == f"suppressed: maintenance window 'db-upgrade' until {end:%H:%M:%S} UTC"
    assert row.until is not None and abs(row.until - end.timestamp()) < 1e-3
    harness.wait_for(lambda: harness.decisions("mw")[-1].repeat > 1, 5, what="a re-check")
    assert harness.executions("mw") == []


def test_observe_mode_records_but_never_acts(harness: AgentHarness, tmp_path: Path) -> None:
    """mode: observe records 'observe' (what it would run) and never runs a step."""
    flag = tmp_path / "flag"
    harness.write_policy("obs", harness.flag_policy("obs", flag, mode="observe"))
    harness.start()
    row = harness.wait_decision("obs", "observe", "mode_observe")
    assert row.message == "observe mode: would run 1 step (create-flag); not acting"
    assert row.observed == {"flag.exists": 0.0}
    harness.wait_for(lambda: harness.decisions("obs")[-1].repeat > 1, 5, what="a re-check")
    assert harness.executions("obs") == [] and not flag.exists()
    assert harness.outcomes("obs") == [("observe", "mode_observe")]


def test_approve_mode_waits_for_a_human(harness: AgentHarness, tmp_path: Path) -> None:
    """mode: approve asks ('approval_needed', a page), and acts once `stanch-agent approve`."""
    flag = tmp_path / "flag"
    guardrails = {"cooldown": "0s", "approval_ttl": "1h"}
    harness.write_policy("appr", harness.flag_policy("appr", flag, mode="approve",
                                                     guardrails=guardrails))  # fmt: skip
    harness.start()
    asked = harness.wait_decision("appr", "awaiting_approval", "approval_needed")
    match = re.search(r"run `stanch-agent approve ([0-9a-f]+)`", asked.message)
    assert match, asked.message
    approval_id = match.group(1)
    assert asked.message.startswith("approve mode: asking a human to approve 1 step (create-flag)")
    page = harness.wait_escalation("approval_needed")
    assert page["policy"] == "appr" and f"stanch-agent approve {approval_id}" in page["message"]
    listed = harness.cli("approvals").stdout
    assert approval_id in listed and "appr" in listed and "pending" in listed
    time.sleep(1.2)  # a few more evaluations: still waiting, nothing run
    assert harness.executions("appr") == [] and not flag.exists()
    assert ("awaiting_approval", "approval_pending") in harness.outcomes("appr")

    out = harness.cli("approve", approval_id, "--by", "alice").stdout
    assert f"approved {approval_id} for policy appr" in out
    act = harness.wait_decision("appr", "act", "approved")
    assert act.message == "approved by alice; running 1 step (create-flag)"
    harness.wait_executions("appr", 1, "fixed")
    [row] = [r for r in harness.journal.approvals(None) if r["id"] == approval_id]
    assert row["status"] == "used"


def test_expired_approval_is_refused(harness: AgentHarness, tmp_path: Path) -> None:
    """An approval past its approval_ttl cannot be used: the CLI refuses, nothing runs."""
    flag = tmp_path / "flag"
    guardrails = {"cooldown": "0s", "approval_ttl": "1s"}
    harness.write_policy("late", harness.flag_policy("late", flag, mode="approve",
                                                     guardrails=guardrails))  # fmt: skip
    harness.start()
    harness.wait_decision("late", "awaiting_approval", "approval_needed")
    first = harness.journal.approvals(None)[-1]
    harness.wait_for(lambda: time.time() > first["expires_at"] + 0.1, 3, what="the expiry")

    done = harness.cli("approve", first["id"], check=False)
    assert done.returncode == 1
    assert "expired" in done.stderr and first["id"] in done.stderr
    time.sleep(1.0)  # the agent keeps asking; it never acts on the stale approval
    assert harness.executions("late") == [] and not flag.exists()
    newer = [r for r in harness.journal.approvals(None) if r["created_at"] > first["created_at"]]
    assert newer, "the agent asks again while the problem persists"
