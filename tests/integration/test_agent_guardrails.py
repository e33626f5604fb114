"""Each guardrail stops a real agent from acting, and the journal says which one and why."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import AgentHarness


def test_cooldown_suppresses_a_rerun_after_a_fix(harness: AgentHarness, tmp_path: Path) -> None:
    """Fixed once, broken again within the cooldown: suppressed 'cooldown until HH:MM:SS'."""
    flag = tmp_path / "flag"
    guardrails = {"cooldown": "1h", "budget": {"max": 10, "per": "1h"}}
    harness.write_policy("cool", harness.flag_policy("cool", flag, guardrails=guardrails))
    harness.start()
    harness.wait_executions("cool", 1, "fixed")
    harness.wait_decision("cool", "fixed")

    flag.unlink()
    cooldown = harness.wait_decision("cool", "suppressed", "cooldown")
    assert cooldown.message.startswith("suppressed: cooldown until ")
    assert cooldown.message.endswith(" UTC")
    [execution] = harness.executions("cool")
    assert cooldown.until is not None
    assert abs(cooldown.until - (execution.started_at + 3600)) < 1e-3
    assert not flag.exists()


def test_budget_counts_failed_attempts(harness: AgentHarness, tmp_path: Path) -> None:
    """Two attempts that fixed nothing spend a budget of 2 per hour: 'budget' suppression."""
    guardrails = {"cooldown": "0s", "budget": {"max": 2, "per": "1h"}, "breaker": {"after": 10}}
    harness.write_policy(
        "budget",
        harness.flag_policy(
            "budget", tmp_path / "flag", fix=False, verify=harness.SHORT_VERIFY,
            guardrails=guardrails,
        ),
    )  # fmt: skip
    harness.start()
    budget = harness.wait_decision("budget", "suppressed", "budget", timeout=15)
    assert budget.message.startswith("suppressed: budget of 2 runs per 1h spent")
    assert "until" in budget.message
    executions = harness.executions("budget")
    assert [e.status for e in executions] == ["not_fixed", "not_fixed"]
    assert budget.until is not None
    assert abs(budget.until - (executions[0].started_at + 3600)) < 1e-3
    harness.wait_for(lambda: harness.decisions("budget")[-1].repeat > 1, 5, what="a re-check")
    assert len(harness.executions("budget")) == 2


def test_host_max_concurrency(harness: AgentHarness, tmp_path: Path) -> None:
    """With max_concurrency 1, a second policy waits ('host_concurrency') while one runs."""
    harness.configure(limits={"max_concurrency": 1, "max_runs_per_hour": 100})
    for name in ("slow-a", "slow-b"):
        flag = tmp_path / name
        slow_fix = harness.shell_step("slow-fix", f"sleep 1.5; touch {flag}")
        harness.write_policy(name, harness.flag_policy(name, flag, steps=[slow_fix]))
    harness.start()

    a = harness.wait_executions("slow-a", 1, "fixed", timeout=15)[0]
    b = harness.wait_executions("slow-b", 1, "fixed", timeout=15)[0]
    first, second = sorted((a, b), key=lambda e: e.started_at)
    assert first.finished_at is not None and second.started_at >= first.finished_at
    waited = [d for d in harness.decisions(second.policy) if d.reason == "host_concurrency"]
    assert waited, harness.describe(second.policy)
    assert waited[0].outcome == "suppressed"
    assert waited[0].message == ("suppressed: 1 remediations already running on this host (max 1)")


def test_host_max_runs_per_hour(harness: AgentHarness, tmp_path: Path) -> None:
    """With max_runs_per_hour 1, the host's first run spends it: the other gets 'host_rate'."""
    harness.configure(limits={"max_concurrency": 2, "max_runs_per_hour": 1})
    for name in ("rate-a", "rate-b"):
        harness.write_policy(name, harness.flag_policy(name, tmp_path / name))
    harness.start()

    def limited() -> str | None:
        for name in ("rate-a", "rate-b"):
            if ("suppressed", "host_rate") in harness.outcomes(name):
                return name
        return None

    name = harness.wait_for(limited, 10, what="a host_rate suppression")
    [row] = [d for d in harness.decisions(name) if d.reason == "host_rate"]
    assert row.message.startswith("suppressed: host limit of 1 runs per hour reached; next at ")
    [execution] = harness.executions()
    assert execution.policy != name
    assert harness.executions(name) == []


def test_breaker_opens_escalates_and_reset_closes_it(harness: AgentHarness, tmp_path: Path) -> None:
    """After 2 runs that did not fix it the breaker opens and pages; `reset` closes it."""
    guardrails = {"cooldown": "0s", "budget": {"max": 10, "per": "1h"}, "breaker": {"after": 2}}
    harness.write_policy(
        "brk",
        harness.flag_policy(
            "brk", tmp_path / "flag", fix=False, verify=harness.SHORT_VERIFY,
            guardrails=guardrails,
        ),
    )  # fmt: skip
    harness.start()
    opened = harness.wait_decision("brk", "suppressed", "breaker_open", timeout=15)
    assert opened.message == (
        "suppressed: circuit breaker open after 2 remediations that did not fix it; "
        "reset with `stanch-agent reset brk`"
    )
    assert [e.status for e in harness.executions("brk")] == ["not_fixed", "not_fixed"]
    page = harness.wait_escalation("breaker_open")
    assert page["policy"] == "brk" and "circuit breaker opened after 2" in page["message"]
    assert page["tried"] and page["tried"][0]["name"] == "try-something"
    assert harness.journal.breaker("brk")[1] is not None

    reset_at = time.time()
    out = harness.cli("reset", "brk").stdout
    assert "breaker for brk closed" in out
    harness.wait_decision("brk", "act", "rule_matched", after=reset_at)
    assert len(harness.wait_executions("brk", 3)) == 3


def storm_of_three(harness: AgentHarness, tmp_path: Path) -> list[str]:
    """Three policies that all fire at once (and whose step fixes nothing)."""
    harness.configure(storm={"percent": 50, "min_firing": 2})
    names = ["storm-a", "storm-b", "storm-c"]
    for name in names:
        harness.write_policy(
            name,
            harness.flag_policy(name, tmp_path / name, fix=False, verify=harness.SHORT_VERIFY),
        )
    return names


def test_storm_guard_stops_automation_host_wide(harness: AgentHarness, tmp_path: Path) -> None:
    """3 of 3 policies firing at once trip the storm guard: 'storm', a host-wide page."""
    names = storm_of_three(harness, tmp_path)
    harness.start()
    for name in names:
        row = harness.wait_decision(name, "suppressed", "storm", timeout=15)
        assert re.match(r"suppressed: storm guard: [23] of 3 policies firing at once", row.message)
        assert "automation stopped host-wide, escalated once for the host" in row.message
    # The first policy to fire may act before the second fires: that is not yet a storm.
    assert len(harness.executions()) <= 1
    page = harness.wait_escalation("storm")
    assert page["policy"] == "*" and page["host"] == "test-host"
    assert re.fullmatch(r"[23] of 3 policies firing at once \(storm-.*\)", page["message"])


def test_storm_pages_once_host_wide_not_per_policy(harness: AgentHarness, tmp_path: Path) -> None:
    """A storm is one widespread problem: one host-wide page, not one per firing policy."""
    names = storm_of_three(harness, tmp_path)
    harness.start()
    for name in names:
        harness.wait_decision(name, "suppressed", "storm", timeout=15)
    harness.wait_escalation("storm")
    time.sleep(0.5)  # let the notifier deliver whatever else was queued
    assert [p["policy"] for p in harness.escalations("storm")] == ["*"]
