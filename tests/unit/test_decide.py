"""The guardrail pipeline: Facts -> Decision, one reason code, in a fixed order of precedence."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.checks.base import Status
from agent.engine.decide import Approval, Decision, Facts, Outcome, clock_text, decide
from agent.engine.rules import Evaluation
from agent.policy.model import (
    Budget,
    CheckSpec,
    Guardrails,
    Mode,
    Policy,
    Rule,
    StateIs,
    Step,
    Window,
)

NOW = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC).timestamp()  # a Tuesday
FIRING = Evaluation(True, ("web is critical",), (), {"web.status": "critical"})

POLICY = Policy(
    name="web-down",
    source="policies/web.yaml",
    checks=(CheckSpec("web", "port", None),),
    rule=Rule(StateIs("when", "web", frozenset({Status.CRITICAL}))),
    steps=(
        Step("restart", ("systemctl", "restart", "nginx")),
        Step("flush", ("nginx", "-s", "reload")),
    ),
    guardrails=Guardrails(
        cooldown=300.0,
        budget=Budget(max_runs=3, window=3600.0),
        breaker_after=3,
        approval_ttl=1800.0,
        maintenance=(Window(start_minute=9 * 60, end_minute=11 * 60, days=frozenset({3})),),
    ),
)


def facts(now: float = NOW, **kw: Any) -> Facts:
    return Facts(now=now, **kw)


def hhmmss(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M:%S UTC")


def test_quiet_when_not_firing() -> None:
    d = decide(POLICY, Evaluation(False), facts(paused=True, storm=True))
    assert d == Decision(Outcome.QUIET, "not_firing", "condition does not hold")


def test_act_when_nothing_stands_in_the_way() -> None:
    d = decide(POLICY, FIRING, facts())
    assert d.outcome is Outcome.ACT
    assert d.reason == "rule_matched"
    assert d.message == "running 2 steps (restart, flush)"
    assert d.until is None
    assert d.escalate is None
    one = replace(POLICY, steps=POLICY.steps[:1])
    assert decide(one, FIRING, facts()).message == "running 1 step (restart)"


# ---- each reason code ------------------------------------------------------------------------


def test_in_progress() -> None:
    d = decide(POLICY, FIRING, facts(in_progress=True, paused=True))
    assert (d.outcome, d.reason) == (Outcome.SUPPRESS, "in_progress")
    assert d.message == "suppressed: a remediation for this policy is already running"


def test_paused_with_until_and_reason() -> None:
    d = decide(
        POLICY,
        FIRING,
        facts(
            paused=True,
            paused_until=NOW + 7200,
            pause_scope="all policies",
            pause_reason="db migration",
        ),
    )
    assert (d.outcome, d.reason, d.until) == (Outcome.SUPPRESS, "paused", NOW + 7200)
    assert d.message == (
        "suppressed: kill switch: paused all policies until 12:00:00 UTC (db migration)"
    )
    assert d.escalate is None


def test_paused_until_resumed() -> None:
    d = decide(POLICY, FIRING, facts(paused=True, pause_scope="web-down"))
    assert d.reason == "paused"
    assert d.until is None
    assert d.message == "suppressed: kill switch: paused web-down until resumed"


def test_maintenance_window() -> None:
    named = replace(
        POLICY,
        guardrails=replace(
            POLICY.guardrails,
            maintenance=(Window(start_minute=9 * 60, end_minute=11 * 60 + 30, name="patching"),),
        ),
    )
    d = decide(named, FIRING, facts())
    end = datetime(2026, 11, 24, 11, 30, tzinfo=UTC).timestamp()
    assert (d.outcome, d.reason, d.until) == (Outcome.SUPPRESS, "maintenance", end)
    assert d.message == "suppressed: maintenance window 'patching' until 11:30:00 UTC"
    # POLICY's own window is on Thursdays only: no effect on a Tuesday.
    assert decide(POLICY, FIRING, facts()).reason == "rule_matched"


def test_host_wide_maintenance_window() -> None:
    host = Window(start_minute=9 * 60 + 30, end_minute=10 * 60 + 15, name="host-patching")
    d = decide(POLICY, FIRING, facts(host_maintenance=(host,)))
    end = datetime(2026, 11, 24, 10, 15, tzinfo=UTC).timestamp()
    assert (d.outcome, d.reason, d.until) == (Outcome.SUPPRESS, "maintenance", end)
    assert d.message == "suppressed: maintenance window 'host-patching' until 10:15:00 UTC"
    later = facts(now=end, host_maintenance=(host,))
    assert decide(POLICY, FIRING, later).reason == "rule_matched"


def test_storm() -> None:
    d = decide(POLICY, FIRING, facts(storm=True, storm_detail="5 of 6 policies firing at once"))
    # No per-policy page: the runner escalates a storm once for the whole host.
    assert (d.outcome, d.reason, d.escalate) == (Outcome.SUPPRESS, "storm", None)
    assert d.message == (
        "suppressed: storm guard: 5 of 6 policies firing at once; automation stopped "
        "host-wide, escalated once for the host"
    )


def test_context() -> None:
    ev = replace(FIRING, context=("deploy running", "db critical"))
    d = decide(POLICY, ev, facts())
    assert (d.outcome, d.reason, d.escalate) == (Outcome.SUPPRESS, "context", "context")
    assert d.message == "suppressed: context deploy running, db critical; not acting, escalating"


def test_breaker_open() -> None:
    d = decide(POLICY, FIRING, facts(breaker_open=True, breaker_failures=3))
    assert (d.outcome, d.reason, d.escalate) == (Outcome.SUPPRESS, "breaker_open", "breaker_open")
    assert d.message == (
        "suppressed: circuit breaker open after 3 remediations that did not fix it; "
        "reset with `stanch-agent reset web-down`"
    )


def test_breaker_failures_below_the_threshold_do_not_suppress() -> None:
    assert decide(POLICY, FIRING, facts(breaker_failures=2)).reason == "rule_matched"


def test_observe_mode() -> None:
    observe = replace(POLICY, mode=Mode.OBSERVE)
    d = decide(observe, FIRING, facts(attempts=(NOW - 10,)))
    assert (d.outcome, d.reason) == (Outcome.OBSERVE, "mode_observe")
    assert d.message == "observe mode: would run 2 steps (restart, flush); not acting"


def test_cooldown_until_last_attempt_plus_cooldown() -> None:
    attempts = (NOW - 3000, NOW - 100, NOW - 2000)
    d = decide(POLICY, FIRING, facts(attempts=attempts))
    assert (d.outcome, d.reason, d.until) == (Outcome.SUPPRESS, "cooldown", NOW + 200)
    assert d.message == "suppressed: cooldown until 10:03:20 UTC"
    assert d.escalate is None


def test_cooldown_ends_exactly_at_last_plus_cooldown() -> None:
    d = decide(POLICY, FIRING, facts(attempts=(NOW - 300,)))
    assert d.reason == "rule_matched"
    d = decide(POLICY, FIRING, facts(attempts=(NOW - 299.5,)))
    assert d.reason == "cooldown"


def test_budget_counts_every_attempt_and_escalates() -> None:
    # Three attempts within the hour (failed, interrupted or fixed: all count), last one out of
    # cooldown; the oldest ages out at NOW - 3000 + 3600.
    d = decide(POLICY, FIRING, facts(attempts=(NOW - 3000, NOW - 2000, NOW - 1000)))
    assert (d.outcome, d.reason, d.until) == (Outcome.SUPPRESS, "budget", NOW + 600)
    assert d.escalate == "budget"
    assert d.message == (
        "suppressed: budget of 3 runs per 1h spent; automation gave up until 10:10:00 UTC, "
        "escalating"
    )
    old = (NOW - 4000, NOW - 2000, NOW - 1000)
    assert decide(POLICY, FIRING, facts(attempts=old)).reason == "rule_matched"


def test_budget_message_singular() -> None:
    one = replace(POLICY, guardrails=replace(POLICY.guardrails, budget=Budget(1, 86400.0)))
    d = decide(one, FIRING, facts(attempts=(NOW - 1000,)))
    assert d.reason == "budget"
    assert "budget of 1 run per 1d spent" in d.message


def test_host_rate() -> None:
    runs = tuple(NOW - 3500 + i for i in range(20))
    d = decide(POLICY, FIRING, facts(host_runs_last_hour=runs))
    assert (d.outcome, d.reason, d.until) == (Outcome.SUPPRESS, "host_rate", NOW + 100)
    assert d.message == ("suppressed: host limit of 20 runs per hour reached; next at 10:01:40 UTC")
    assert decide(POLICY, FIRING, facts(host_runs_last_hour=runs[1:])).reason == "rule_matched"


def test_host_concurrency() -> None:
    d = decide(POLICY, FIRING, facts(host_running=2, host_max_concurrency=2))
    assert (d.outcome, d.reason, d.until) == (Outcome.SUPPRESS, "host_concurrency", None)
    assert d.message == "suppressed: 2 remediations already running on this host (max 2)"
    assert decide(POLICY, FIRING, facts(host_running=1)).reason == "rule_matched"


# ---- precedence ------------------------------------------------------------------------------

EVERYTHING = {
    "in_progress": {"in_progress": True},
    "paused": {"paused": True, "pause_scope": "all policies"},
    "maintenance": {"now": datetime(2026, 11, 26, 10, tzinfo=UTC).timestamp()},  # Thursday
    "storm": {"storm": True, "storm_detail": "4 of 4"},
    "context": {},
    "breaker_open": {"breaker_open": True, "breaker_failures": 3},
    "mode_observe": {},
    "cooldown": {"attempts": (NOW - 3000, NOW - 2000, NOW - 60)},
    "budget": {"attempts": (NOW - 3000, NOW - 2000, NOW - 1000)},
    "host_rate": {"host_runs_last_hour": tuple(NOW - 100 - i for i in range(20))},
    "host_concurrency": {"host_running": 2},
    "approval_needed": {},
}
ORDER = list(EVERYTHING)


@pytest.mark.parametrize("index", range(len(ORDER)))
def test_precedence(index: int) -> None:
    """With every guard from ``index`` on active, the one at ``index`` is the reason."""
    active = ORDER[index:]
    kw: dict[str, Any] = {}
    for reason in active:
        if reason == "cooldown" and "budget" in active:
            continue  # budget's attempts include a recent one: cooldown still wins first
        kw.update(EVERYTHING[reason])
    if "cooldown" in active:
        kw["attempts"] = (NOW - 3000, NOW - 2000, NOW - 60)
    ev = replace(FIRING, context=("deploy running",)) if "context" in active else FIRING
    mode = Mode.OBSERVE if "mode_observe" in active else Mode.APPROVE
    d = decide(replace(POLICY, mode=mode), ev, facts(**kw))
    assert d.reason == ORDER[index]


def test_budget_precedes_host_limits_and_cooldown_precedes_budget() -> None:
    spent = (NOW - 3000, NOW - 2000, NOW - 60)
    assert decide(POLICY, FIRING, facts(attempts=spent)).reason == "cooldown"
    assert decide(POLICY, FIRING, facts(attempts=spent, now=NOW + 300)).reason == "budget"


# ---- approve mode ----------------------------------------------------------------------------

APPROVE = replace(POLICY, mode=Mode.APPROVE)


def test_approval_needed_asks_and_escalates() -> None:
    d = decide(APPROVE, FIRING, facts())
    assert (d.outcome, d.reason, d.until) == (Outcome.AWAIT, "approval_needed", NOW + 1800)
    assert d.escalate == "approval_needed"
    assert d.approval_id is None
    assert d.message == (
        "approve mode: asking a human to approve 2 steps (restart, flush) (expires 10:30:00 UTC)"
    )


def test_approval_flow_needed_pending_approved_act() -> None:
    needed = decide(APPROVE, FIRING, facts())
    assert needed.reason == "approval_needed"
    assert needed.until is not None
    pending = Approval("ab12cd34", "pending", needed.until)
    d = decide(APPROVE, FIRING, facts(now=NOW + 60, approval=pending))
    assert (d.outcome, d.reason, d.until, d.approval_id) == (
        Outcome.AWAIT,
        "approval_pending",
        NOW + 1800,
        "ab12cd34",
    )
    assert d.escalate is None
    assert d.message == "waiting for `stanch-agent approve ab12cd34` until 10:30:00 UTC"
    approved = replace(pending, status="approved", decided_by="alice")
    d = decide(APPROVE, FIRING, facts(now=NOW + 120, approval=approved))
    assert (d.outcome, d.reason, d.approval_id) == (Outcome.ACT, "approved", "ab12cd34")
    assert d.message == "approved by alice; running 2 steps (restart, flush)"


def test_approved_without_a_name() -> None:
    d = decide(APPROVE, FIRING, facts(approval=Approval("x", "approved", NOW + 60)))
    assert d.message == "approved; running 2 steps (restart, flush)"


def test_rejected_suppresses_until_the_request_expires() -> None:
    rejected = Approval("ab12cd34", "rejected", NOW + 900, decided_by="bob")
    d = decide(APPROVE, FIRING, facts(approval=rejected))
    assert (d.outcome, d.reason, d.until) == (Outcome.SUPPRESS, "approval_rejected", NOW + 900)
    assert d.message == "suppressed: rejected by bob until 10:15:00 UTC"
    d = decide(APPROVE, FIRING, facts(approval=rejected, now=NOW + 900))
    assert d.reason == "approval_needed"


@pytest.mark.parametrize(
    "approval",
    [
        Approval("old", "pending", NOW),  # expired by time
        Approval("old", "approved", NOW - 1),  # approved too late: ask again
        Approval("old", "expired", NOW + 900),
        Approval("old", "used", NOW + 900),  # one approval, one run
    ],
)
def test_stale_approvals_ask_again(approval: Approval) -> None:
    d = decide(APPROVE, FIRING, facts(approval=approval))
    assert (d.outcome, d.reason, d.until) == (Outcome.AWAIT, "approval_needed", NOW + 1800)
    assert d.approval_id is None


def test_approval_does_not_bypass_guardrails() -> None:
    approved = Approval("ab12cd34", "approved", NOW + 900)
    d = decide(APPROVE, FIRING, facts(approval=approved, attempts=(NOW - 10,)))
    assert d.reason == "cooldown"
    d = decide(APPROVE, FIRING, facts(approval=approved, breaker_open=True))
    assert d.reason == "breaker_open"


def test_auto_mode_ignores_approvals() -> None:
    d = decide(POLICY, FIRING, facts(approval=Approval("x", "rejected", NOW + 900)))
    assert d.reason == "rule_matched"
    assert d.approval_id is None


def test_clock_text_is_utc() -> None:
    assert clock_text(NOW + 3 * 3600 + 4 * 60 + 5.9) == "13:04:05 UTC"
    assert clock_text(NOW) == hhmmss(NOW)
