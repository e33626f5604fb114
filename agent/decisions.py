"""From a check result to a recorded decision: evaluate the rule, gather the facts, decide, act.

Runs on the main loop, which owns all policy state. A policy is decided only once every one of
its checks has reported (the context must be known), and not while its own remediation runs
(that remediation's verification decides). The decision itself is the pure ``decide()``; this
module gathers its ``Facts`` from the journal, the pause file and the live state, writes the
decision (and an approval request when one is needed), escalates, and hands an ``ACT`` to the
executions boundary.

The storm guard is host-wide: when too many policies fire at once, automation holds and one
``storm`` escalation goes out.
"""

from __future__ import annotations

import logging

from agent.checks.base import CheckResult
from agent.clock import Clock
from agent.config import AgentConfig
from agent.engine.decide import Approval, Decision, Facts, Outcome, decide
from agent.engine.rules import Evaluation, evaluate
from agent.escalate import Escalator
from agent.executions import Executions
from agent.instrumentation import Instruments
from agent.journal import Journal
from agent.logs import log_event
from agent.pauses import PauseFile
from agent.policyset import LivePolicy


class Decider:
    def __init__(
        self,
        config: AgentConfig,
        clock: Clock,
        journal: Journal,
        pauses: PauseFile,
        escalator: Escalator,
        executions: Executions,
        policies: dict[str, LivePolicy],
    ) -> None:
        self.config = config
        self.clock = clock
        self.journal = journal
        self.pauses = pauses
        self.escalator = escalator
        self.executions = executions
        self.policies = policies
        """The runner's live policies (the same dict, read only here)."""
        self.storm = False

    def on_result(self, lp: LivePolicy, result: CheckResult, metrics: Instruments) -> None:
        metrics.observe_check(lp.policy.name, result.check, result)
        lp.results[result.check] = result
        if len(lp.results) < len(lp.checks):
            return  # context must be known before deciding: wait for every check once
        ev = evaluate(lp.policy.rule, lp.results, lp.memory, self.clock.monotonic())
        was_firing, lp.firing = lp.firing, ev.firing
        self._update_storm()
        if not ev.firing:
            if was_firing:
                self._cleared(lp, ev)
            return
        if lp.running:
            return  # the remediation's own verification decides; its result is recorded
        decision = decide(lp.policy, ev, self.facts(lp))
        self._apply(lp, ev, decision, metrics)

    def _update_storm(self) -> None:
        firing = sum(1 for lp in self.policies.values() if lp.firing)
        storm = self.config.storm.tripped(firing, len(self.policies))
        if storm != self.storm:
            self.storm = storm
            log_event(
                "storm_guard",
                logging.WARNING if storm else logging.INFO,
                active=storm,
                firing=firing,
                policies=len(self.policies),
            )
            if storm:
                self.escalator.escalate("*", "storm", self._storm_detail(), policy=None)

    def _storm_detail(self) -> str:
        firing = sorted(n for n, lp in self.policies.items() if lp.firing)
        return (
            f"{len(firing)} of {len(self.policies)} policies firing at once ({', '.join(firing)})"
        )

    def facts(self, lp: LivePolicy) -> Facts:
        """Everything ``decide()`` needs about this policy and the host, from the journal,
        the pause file and the live state."""
        name = lp.policy.name
        g = lp.policy.guardrails
        now = self.clock.now()
        pause = self.pauses.effective(name, now)
        failures, opened = self.journal.breaker(name)
        row = self.journal.latest_approval(name)
        approval = None
        if row is not None:
            approval = Approval(row["id"], row["status"], row["expires_at"], row["decided_by"])
        return Facts(
            now=now,
            attempts=self.journal.attempts_since(name, now - max(g.budget.window, g.cooldown)),
            in_progress=lp.running is not None,
            paused=pause is not None,
            paused_until=pause.until if pause else None,
            pause_scope=("all policies" if pause.scope == "*" else name) if pause else "",
            pause_reason=pause.reason if pause else "",
            storm=self.storm,
            storm_detail=self._storm_detail() if self.storm else "",
            breaker_failures=failures,
            breaker_open=opened is not None,
            approval=approval,
            host_running=sum(1 for p in self.policies.values() if p.running),
            host_max_concurrency=self.config.max_concurrency,
            host_runs_last_hour=self.journal.host_attempts_since(now - 3600.0),
            host_max_per_hour=self.config.max_runs_per_hour,
            host_maintenance=self.config.maintenance,
        )

    def _apply(
        self, lp: LivePolicy, ev: Evaluation, decision: Decision, metrics: Instruments
    ) -> None:
        name = lp.policy.name
        now = self.clock.now()
        message = decision.message
        approval_id = decision.approval_id
        if decision.reason == "approval_needed" and decision.until is not None:
            approval_id = self.journal.create_approval(name, now, decision.until, message)
            message = f"{message}; run `stanch-agent approve {approval_id}`"
        decision_id = self.journal.record_decision(
            name,
            now,
            decision.outcome.value,
            decision.reason,
            message,
            ev.observed,
            ev.why,
            decision.until,
        )
        metrics.observe_decision(name, decision.outcome.value, decision.reason)
        if decision.reason != (lp.last.reason if lp.last else None):
            log_event(
                "decision",
                policy=name,
                outcome=decision.outcome.value,
                reason=decision.reason,
                message=message,
            )
        lp.last = decision
        if decision.escalate:
            self.escalator.escalate(
                name,
                decision.escalate,
                message,
                policy=lp.policy,
                observed=ev.observed,
                approval_id=approval_id,
            )
        if decision.outcome is not Outcome.ACT:
            return
        self.executions.launch(lp, ev, now, decision_id, approval_id)

    def _cleared(self, lp: LivePolicy, ev: Evaluation) -> None:
        name = lp.policy.name
        self.journal.forget_last_decision(name)
        self.journal.record_decision(
            name,
            self.clock.now(),
            "cleared",
            "condition_cleared",
            "condition no longer holds",
            ev.observed,
            ev.why,
        )
        self.journal.forget_last_decision(name)
        self.escalator.resolve(name, lp.policy, "condition no longer holds")
        self.journal.clear_escalations(name)
        lp.last = None
        log_event("condition_cleared", policy=name)
