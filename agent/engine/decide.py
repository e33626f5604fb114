"""Should this policy act now, and if not, why not? A pure function of facts and time.

``decide()`` takes the rule's evaluation, the policy, and ``Facts`` the runner gathered from the
journal (attempt times, breaker, pauses, approvals, host-wide counters), and returns one
``Decision`` with a reason code, a plain-words message and, where it applies, when the
suppression ends. It never writes or runs anything. Guards are checked in a fixed order, from
"a human said stop" to "the policy's own limits", so the recorded reason is the most important one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from agent.duration import format_duration
from agent.engine.guardrails import active_window, budget_until, window_end
from agent.engine.rules import Evaluation
from agent.policy.model import Mode, Policy, Window


class Outcome(StrEnum):
    ACT = "act"
    OBSERVE = "observe"
    SUPPRESS = "suppressed"
    AWAIT = "awaiting_approval"
    QUIET = "quiet"
    """The rule does not fire; nothing to decide."""


@dataclass(frozen=True)
class Approval:
    id: str
    status: str
    """pending, approved, rejected, expired or used."""
    expires_at: float
    decided_by: str = ""


@dataclass(frozen=True)
class Facts:
    now: float
    attempts: tuple[float, ...] = ()
    """Start times of this policy's attempts (every attempt counts: failed, interrupted too)."""
    in_progress: bool = False
    paused: bool = False
    paused_until: float | None = None
    """None with ``paused``: until someone runs ``stanch-agent resume``."""
    pause_scope: str = ""
    pause_reason: str = ""
    storm: bool = False
    storm_detail: str = ""
    breaker_failures: int = 0
    breaker_open: bool = False
    approval: Approval | None = None
    host_running: int = 0
    host_max_concurrency: int = 2
    host_runs_last_hour: tuple[float, ...] = ()
    host_max_per_hour: int = 20
    host_maintenance: tuple[Window, ...] = ()
    """Host-wide maintenance windows from the agent config, on top of the policy's own."""


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    message: str
    until: float | None = None
    escalate: str | None = None
    """Escalation reason code when automation gives up here (storm, context, breaker...)."""
    approval_id: str | None = None
    details: dict[str, object] = field(default_factory=dict)


def clock_text(ts: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(ts))


def decide(policy: Policy, ev: Evaluation, facts: Facts) -> Decision:
    if not ev.firing:
        return Decision(Outcome.QUIET, "not_firing", "condition does not hold")
    now = facts.now
    g = policy.guardrails
    if facts.in_progress:
        return _suppress("in_progress", "a remediation for this policy is already running")
    if facts.paused:
        until = facts.paused_until
        why = f" ({facts.pause_reason})" if facts.pause_reason else ""
        when = f"until {clock_text(until)}" if until is not None else "until resumed"
        return _suppress("paused", f"kill switch: paused {facts.pause_scope} {when}{why}", until)
    window = active_window((*g.maintenance, *facts.host_maintenance), now)
    if window is not None:
        end = window_end(window, now)
        label = f" {window.name!r}" if window.name else ""
        return _suppress("maintenance", f"maintenance window{label} until {clock_text(end)}", end)
    if facts.storm:
        return _suppress(
            "storm",
            f"storm guard: {facts.storm_detail}; automation stopped host-wide, escalated "
            "once for the host",
        )
    if ev.context:
        return _suppress(
            "context",
            f"context {', '.join(ev.context)}; not acting, escalating",
            escalate="context",
        )
    if facts.breaker_open:
        return _suppress(
            "breaker_open",
            f"circuit breaker open after {facts.breaker_failures} "
            "remediations that did not fix it; reset with `stanch-agent reset "
            f"{policy.name}`",
            escalate="breaker_open",
        )
    if policy.mode is Mode.OBSERVE:
        return Decision(
            Outcome.OBSERVE, "mode_observe", f"observe mode: would run {_steps(policy)}; not acting"
        )
    last = max(facts.attempts, default=None)
    if last is not None and now < last + g.cooldown:
        return _suppress(
            "cooldown", f"cooldown until {clock_text(last + g.cooldown)}", last + g.cooldown
        )
    until = budget_until(facts.attempts, g.budget.max_runs, g.budget.window, now)
    if until is not None:
        return _suppress(
            "budget",
            f"budget of {_runs(g.budget.max_runs)} per {format_duration(g.budget.window)} "
            f"spent; automation gave up until {clock_text(until)}, escalating",
            until,
            escalate="budget",
        )
    host_until = budget_until(facts.host_runs_last_hour, facts.host_max_per_hour, 3600.0, now)
    if host_until is not None:
        return _suppress(
            "host_rate",
            f"host limit of {facts.host_max_per_hour} runs per hour "
            f"reached; next at {clock_text(host_until)}",
            host_until,
        )
    if facts.host_running >= facts.host_max_concurrency:
        return _suppress(
            "host_concurrency",
            f"{facts.host_running} remediations already "
            f"running on this host (max {facts.host_max_concurrency})",
        )
    if policy.mode is Mode.APPROVE:
        return _approval(policy, facts)
    return Decision(Outcome.ACT, "rule_matched", f"running {_steps(policy)}")


def _approval(policy: Policy, facts: Facts) -> Decision:
    ap = facts.approval
    now = facts.now
    if ap is not None and ap.status == "approved" and ap.expires_at > now:
        by = f" by {ap.decided_by}" if ap.decided_by else ""
        return Decision(
            Outcome.ACT, "approved", f"approved{by}; running {_steps(policy)}", approval_id=ap.id
        )
    if ap is not None and ap.status == "pending" and ap.expires_at > now:
        return Decision(
            Outcome.AWAIT,
            "approval_pending",
            f"waiting for `stanch-agent approve {ap.id}` until {clock_text(ap.expires_at)}",
            ap.expires_at,
            approval_id=ap.id,
        )
    if ap is not None and ap.status == "rejected" and ap.expires_at > now:
        by = f" by {ap.decided_by}" if ap.decided_by else ""
        return _suppress(
            "approval_rejected",
            f"rejected{by} until {clock_text(ap.expires_at)}",
            ap.expires_at,
        )
    expires = now + policy.guardrails.approval_ttl
    return Decision(
        Outcome.AWAIT,
        "approval_needed",
        f"approve mode: asking a human to approve {_steps(policy)} (expires {clock_text(expires)})",
        expires,
        escalate="approval_needed",
    )


def _suppress(
    reason: str, message: str, until: float | None = None, escalate: str | None = None
) -> Decision:
    return Decision(Outcome.SUPPRESS, reason, f"suppressed: {message}", until, escalate)


def _steps(policy: Policy) -> str:
    names = ", ".join(s.name for s in policy.steps)
    return f"{len(policy.steps)} step{'s' if len(policy.steps) != 1 else ''} ({names})"


def _runs(count: int) -> str:
    return f"{count} run{'s' if count != 1 else ''}"
