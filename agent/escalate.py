"""Escalation: when automation gives up, tell a human, with the runbook and what was tried.

Reasons: ``breaker_open``, ``storm``, ``not_fixed`` (verification failed), ``context`` (a context
rule stopped the action), ``approval_needed``, ``interrupted``. Each (policy, reason) is notified
at most once per the policy's ``escalation.repeat``; the notification is queued in the journal
and delivered by the notifier with retries, so it survives an agent restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from agent.clock import Clock
from agent.config import AgentConfig
from agent.journal import Journal, Report
from agent.logs import log_event
from agent.notify import Notifier, build_payload, build_sinks, resolve_payload
from agent.policy.model import Policy

DEFAULT_REPEAT = 3600.0


class Escalator:
    def __init__(self, config: AgentConfig, journal: Journal, clock: Clock) -> None:
        self.config = config
        self.journal = journal
        self.clock = clock
        self.notifier = Notifier(
            journal, build_sinks(config.sinks), clock, redactor=config.redactor
        )

    def start(self) -> None:
        self.notifier.start()

    def stop(self) -> None:
        self.notifier.stop(timeout=5.0)

    def resolve(
        self, key: str, policy: Policy | None, message: str, execution_id: str = ""
    ) -> bool:
        """The problem behind ``key``'s escalations is fixed: tell the sinks that want to know
        (PagerDuty resolves the incident for this host and policy, Slack posts a follow-up).
        Call it before ``Journal.clear_escalations``; a no-op when nothing was escalated."""
        if not self.journal.has_escalations(key):
            return False
        sinks = (policy.escalation.sinks if policy else ()) or self.config.default_sinks
        payload = resolve_payload(
            key,
            self.config.host_id,
            message,
            policy.runbook if policy else "",
            execution_id,
            self.clock.now(),
            self.config.labels,
        )
        return bool(self.notifier.enqueue_resolve(payload, sinks))

    def escalate(
        self,
        key: str,
        reason: str,
        message: str,
        policy: Policy | None,
        execution_id: str | None = None,
        observed: Mapping[str, Any] | None = None,
        approval_id: str | None = None,
    ) -> bool:
        """Queue a notification unless this reason was escalated recently. Returns True when
        one was queued (or logged, with no sink configured)."""
        now = self.clock.now()
        repeat = policy.escalation.repeat if policy else DEFAULT_REPEAT
        if not self.journal.should_escalate(key, reason, now, repeat):
            return False
        tried: list[dict[str, Any]] = []
        if execution_id:
            row = self.journal.execution(execution_id)
            tried = row.steps if row else []
        sinks = (policy.escalation.sinks if policy else ()) or self.config.default_sinks
        payload = build_payload(
            policy=key,
            host=self.config.host_id,
            severity=policy.severity.value if policy else "critical",
            reason=reason,
            message=message
            + (
                f" (approve: stanch-agent approve {approval_id})"
                if approval_id and reason == "approval_needed"
                else ""
            ),
            runbook=policy.runbook if policy else "",
            tried=tried,
            observed=dict(observed or {}),
            correlation_id=execution_id or "",
            at=now,
            labels=dict(self.config.labels),
        )
        # Upstream too (a no-op without a control plane): escalations feed rollout health gates.
        self.journal.report(
            Report("escalation", key, now, "escalated", reason, {**payload, "sinks": list(sinks)})
        )
        for sink in sinks:
            self.journal.enqueue_notification(sink, payload, now)
        if sinks:
            self.notifier.wake()
        log_event(
            "escalated",
            logging.WARNING,
            policy=key,
            reason=reason,
            sinks=list(sinks),
            message=message,
            correlation_id=execution_id,
        )
        return True
