"""One remediation, run on a worker thread: steps, settle, verify, record.

The intent row already exists (the main loop committed it before submitting this job). This job
records step results as they finish, then re-checks the policy's checks until the problem clears
or the verification timeout passes. Only a cleared condition counts as *fixed*.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import failpoints
from agent.checks.base import CheckResult, MetricValue
from agent.checks.proctable import ProcessTable
from agent.clock import Clock
from agent.engine.rules import problem_cleared
from agent.journal import Journal
from agent.policy.model import Policy
from agent.remediate import CommandRunner, redactor_of, run_steps
from agent.sampling import LiveCheck, sample


@dataclass(frozen=True)
class RemediationResult:
    policy: str
    execution_id: str
    status: str
    """fixed, not_fixed (steps ran, problem remains) or failed (a step failed)."""
    summary: str
    verification: str
    observed: dict[str, Any] = field(default_factory=dict)
    results: dict[str, CheckResult] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)


def template_values(results: Mapping[str, CheckResult]) -> dict[str, MetricValue]:
    """``check.metric`` -> value, what ``{{ check.metric }}`` arguments may use."""
    return {f"{r.check}.{k}": v for r in results.values() for k, v in r.metrics.items()}


class Remediation:
    def __init__(
        self,
        policy: Policy,
        execution_id: str,
        checks: dict[str, LiveCheck],
        runner: CommandRunner,
        journal: Journal,
        clock: Clock,
        processes: ProcessTable,
        stop: threading.Event,
        observed: Mapping[str, MetricValue],
        results: dict[str, CheckResult],
    ) -> None:
        self.policy = policy
        self.execution_id = execution_id
        self.checks = checks
        self.runner = runner
        self.journal = journal
        self.clock = clock
        self.processes = processes
        self.stop = stop
        self.observed = dict(observed)
        self.results = results

    def run(self) -> RemediationResult:
        try:
            return self._run()
        except Exception as exc:  # the boundary: record, never lose the execution
            summary = redactor_of(self.runner).redact(f"internal error during remediation: {exc}")
            self.journal.finish_execution(
                self.execution_id, self.clock.now(), "failed", "", summary
            )
            return RemediationResult(
                self.policy.name, self.execution_id, "failed", summary, "", self.observed
            )

    def _run(self) -> RemediationResult:
        steps_json: list[dict[str, Any]] = []

        def save(records: list[Any]) -> None:
            steps_json[:] = [r.to_dict() for r in records]
            self.journal.record_steps(self.execution_id, steps_json)

        # Scripts shipped beside the policy (in a bundle: its files/) are found via POLICY_DIR.
        policy_dir = {"POLICY_DIR": str(Path(self.policy.source).parent)}
        records = run_steps(
            self.policy.steps, template_values(self.results), self.runner, save, policy_dir
        )
        failpoints.hit("crash_after_steps")
        # The first failure of a step that may not fail; a tolerated failure before it
        # (continue_on_error) must not hide it.
        failed = next((r for r in records if r.error and not _continued(self.policy, r.name)), None)
        hard_fail = failed is not None
        cleared, verification, results = self._verify()
        if cleared:
            status, summary = "fixed", verification
        elif hard_fail and failed is not None:
            status = "failed"
            summary = f"step {failed.name!r} {failed.error}; {verification}"
        else:
            status, summary = "not_fixed", verification
        self.journal.finish_execution(
            self.execution_id,
            self.clock.now(),
            status,
            verification,
            None if status == "fixed" else summary,
        )
        fresh = template_values(results)
        observed = {k: fresh[k] for k in self.observed if k in fresh}
        return RemediationResult(
            self.policy.name,
            self.execution_id,
            status,
            summary,
            verification,
            observed,
            results,
            steps_json,
        )

    def _verify(self) -> tuple[bool, str, dict[str, CheckResult]]:
        v = self.policy.verification
        start = self.clock.monotonic()
        self.stop.wait(v.settle)
        deadline = self.clock.monotonic() + v.timeout
        results: dict[str, CheckResult] = {}
        while True:
            self.processes.invalidate()
            results = {n: sample(live, self.clock.now()) for n, live in self.checks.items()}
            cleared, why = problem_cleared(self.policy.rule, results)
            elapsed = self.clock.monotonic() - start
            if cleared:
                return True, f"condition cleared {elapsed:.1f}s after the steps", results
            if self.clock.monotonic() >= deadline or self.stop.is_set():
                cut = " (cut short: agent stopping)" if self.stop.is_set() else ""
                return False, f"still {why} after {elapsed:.1f}s{cut}", results
            self.stop.wait(v.interval)


def _continued(policy: Policy, step_name: str) -> bool:
    return any(s.name == step_name and s.continue_on_error for s in policy.steps)
