"""An execution's life in the journal: intent before the first command, outcome after verifying.

This is the boundary between the main loop and the remediation pool (host-wide
``max_concurrency`` workers). ``launch`` commits the intent row (fsync) before the job is even
submitted; the job runs the steps and the verification on the pool and posts its result back
to the main loop as a ``done`` event; ``finished`` records the outcome, moves the circuit
breaker and escalates or resolves.

Crash safety: a row found ``running`` at start-up is marked ``interrupted`` by ``recover``,
counted against the budget, escalated, and never re-run.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from agent import failpoints
from agent.checks.proctable import ProcessTable
from agent.clock import Clock
from agent.config import AgentConfig
from agent.engine.rules import Evaluation
from agent.escalate import Escalator
from agent.instrumentation import Instruments
from agent.journal import Journal
from agent.logs import log_event
from agent.policyset import LivePolicy
from agent.remediate import CommandRunner
from agent.remediation import Remediation, RemediationResult


class Executions:
    def __init__(
        self,
        config: AgentConfig,
        clock: Clock,
        journal: Journal,
        escalator: Escalator,
        runner: CommandRunner,
        processes: ProcessTable,
        stop: threading.Event,
        events: queue.Queue[tuple[Any, ...]],
    ) -> None:
        self.clock = clock
        self.journal = journal
        self.escalator = escalator
        self.runner = runner
        self.processes = processes
        self.stop = stop
        self.events = events
        self.pool = ThreadPoolExecutor(config.max_concurrency, "stanch-fix")

    def recover(self, metrics: Instruments) -> None:
        """Mark every execution left ``running`` by a previous agent as interrupted."""
        now = self.clock.now()
        for row in self.journal.running_executions():
            # Report first, then mark: a crash in between repeats the report (the decision is
            # written once per execution, the page is deduplicated) and never loses it.
            log_event(
                "execution_interrupted", logging.WARNING, policy=row.policy, correlation_id=row.id
            )
            if not self.journal.has_decision(row.id, "interrupted"):
                self.journal.record_decision(
                    row.policy,
                    now,
                    "interrupted",
                    "crash_recovery",
                    f"remediation {row.id} was interrupted by an agent stop; counted against "
                    "the budget and not re-run",
                    row.observed,
                    [],
                    execution_id=row.id,
                )
            self.escalator.escalate(
                row.policy,
                "interrupted",
                f"remediation {row.id} was interrupted; check the host",
                policy=None,
                execution_id=row.id,
            )
            failpoints.hit("crash_after_recover_report")
            self.journal.mark_interrupted(row.id, now)
            metrics.observe_remediation(row.policy, "interrupted", None)

    def launch(
        self,
        lp: LivePolicy,
        ev: Evaluation,
        now: float,
        decision_id: int,
        approval_id: str | None,
    ) -> None:
        """Commit the intent, then run the remediation on the pool; its result comes back to
        the main loop as a ``done`` event."""
        name = lp.policy.name
        execution_id = self.journal.begin_execution(
            name, now, decision_id, ev.observed, approval_id
        )
        failpoints.hit("crash_after_intent")
        lp.running = execution_id
        log_event("remediation_started", policy=name, correlation_id=execution_id)
        job = Remediation(
            lp.policy,
            execution_id,
            dict(lp.checks),
            self.runner,
            self.journal,
            self.clock,
            self.processes,
            self.stop,
            ev.observed,
            dict(lp.results),
        )
        future = self.pool.submit(job.run)

        def done(f: Future[RemediationResult]) -> None:
            self.events.put(("done", _outcome(f, job)))

        future.add_done_callback(done)

    def finished(
        self, lp: LivePolicy | None, result: RemediationResult, metrics: Instruments
    ) -> None:
        """Free the policy, record the outcome, move the breaker, escalate or resolve."""
        if lp is not None and lp.running == result.execution_id:
            lp.running = None
            # Sample again at once: re-evaluate from fresh results (recording "cleared" when
            # fixed) and start watching the pids of a restarted process straight away.
            for live in lp.checks.values():
                live.next_due = self.clock.monotonic()
        name = result.policy
        now = self.clock.now()
        failures, _opened = self.journal.breaker(name)
        policy = lp.policy if lp else None
        self.journal.forget_last_decision(name)
        self.journal.record_decision(
            name,
            now,
            result.status,
            "verification",
            result.summary,
            result.observed,
            [] if result.status == "fixed" else [result.verification],
            execution_id=result.execution_id,
        )
        self.journal.forget_last_decision(name)
        log_event(
            "remediation_finished",
            policy=name,
            correlation_id=result.execution_id,
            status=result.status,
        )
        row = self.journal.execution(result.execution_id)
        metrics.observe_remediation(name, result.status, now - row.started_at if row else None)
        if result.status == "fixed":
            self.journal.set_breaker(name, 0, None)
            self.escalator.resolve(name, policy, result.summary, result.execution_id)
            self.journal.clear_escalations(name)
            return
        failures += 1
        after = policy.guardrails.breaker_after if policy else 3
        opened = now if failures >= after else None
        self.journal.set_breaker(name, failures, opened)
        self.escalator.escalate(
            name,
            result.status,
            result.summary,
            policy=policy,
            execution_id=result.execution_id,
            observed=result.observed,
        )
        if opened is not None:
            self.escalator.escalate(
                name,
                "breaker_open",
                f"circuit breaker opened after "
                f"{failures} remediations that did not fix the problem",
                policy=policy,
                execution_id=result.execution_id,
            )

    def close(self) -> None:
        """Cancel the jobs not started yet; do not wait for the running ones."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def _outcome(future: Future[RemediationResult], job: Remediation) -> RemediationResult:
    """The job's result; a job that could not even record its failure (the journal became
    unwritable) still frees its policy: the row stays ``running`` and the next start marks it
    interrupted, never re-run."""
    exc = future.exception()
    if exc is None:
        return future.result()
    summary = f"the result could not be recorded: {exc}"
    log_event("remediation_unrecorded", logging.ERROR, policy=job.policy.name, error=str(exc))
    return RemediationResult(job.policy.name, job.execution_id, "failed", summary, "", job.observed)
