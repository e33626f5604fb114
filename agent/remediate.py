"""Run a policy's remediation steps: the runbook commands an engineer would have typed.

Steps are argv lists run without a shell (``shell: true`` must be asked for in the policy). Values
from checks enter argv only as whole arguments: ``["kill", "-9", "{{ runaway.pid }}"]`` becomes
``["kill", "-9", "4242"]`` whatever the value holds, because it is never spliced into a string a
shell would parse. Commands go through a ``CommandRunner`` so tests can inject one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.checks.base import MetricValue
from agent.policy.loader import TEMPLATE_RE
from agent.policy.model import Step
from agent.subproc import DEFAULT_OUTPUT_LIMIT, Outcome, run_bounded, scrubbed_env


class CommandRunner(Protocol):
    def run(
        self, argv: Sequence[str], timeout: float, env: Mapping[str, str], cwd: str | None
    ) -> Outcome: ...


class SubprocessRunner:
    """Runs real processes in their own session, killed as a group at the timeout."""

    def __init__(self, output_limit: int = DEFAULT_OUTPUT_LIMIT) -> None:
        self.output_limit = output_limit

    def run(
        self, argv: Sequence[str], timeout: float, env: Mapping[str, str], cwd: str | None
    ) -> Outcome:
        return run_bounded(argv, timeout, env=env, cwd=cwd, output_limit=self.output_limit)


class TemplateError(ValueError):
    pass


def render_argv(step: Step, values: Mapping[str, MetricValue]) -> tuple[str, ...]:
    """Substitute ``{{ check.metric }}`` arguments (whole arguments only; the loader refuses
    anything else). A missing value is an error, never an empty string."""
    if step.shell:
        return ("/bin/sh", "-c", step.argv[0])
    out = []
    for arg in step.argv:
        match = TEMPLATE_RE.fullmatch(arg)
        if match is None:
            out.append(arg)
            continue
        key = match.group(1)
        if key not in values:
            raise TemplateError(
                f"step {step.name!r}: no value for {{{{ {key} }}}} (the check has not produced it)"
            )
        value = values[key]
        out.append(
            str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        )
    return tuple(out)


@dataclass(frozen=True)
class StepRecord:
    name: str
    argv: tuple[str, ...]
    ok: bool
    exit_code: int | None
    duration: float
    stdout: str
    stderr: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "argv": list(self.argv),
            "ok": self.ok,
            "exit_code": self.exit_code,
            "duration_ms": round(self.duration * 1000, 1),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error": self.error,
        }


def run_steps(
    steps: Sequence[Step],
    values: Mapping[str, MetricValue],
    runner: CommandRunner,
    on_step: Callable[[list[StepRecord]], None] | None = None,
    base_env: Mapping[str, str] | None = None,
) -> list[StepRecord]:
    """Run steps in order; stop at the first failure unless the step says continue_on_error.
    ``on_step`` sees the records so far after each step (the journal saves them as they come).
    ``base_env`` is set for every step under the step's own ``env``."""
    records: list[StepRecord] = []
    for step in steps:
        try:
            argv = render_argv(step, values)
        except TemplateError as exc:
            records.append(StepRecord(step.name, step.argv, False, None, 0.0, "", "", str(exc)))
            if on_step:
                on_step(records)
            break
        outcome = runner.run(
            argv, step.timeout, scrubbed_env({**(base_env or {}), **dict(step.env)}), step.cwd
        )
        error = outcome.error
        if error is None and outcome.exit_code != 0:
            error = f"exited with status {outcome.exit_code}"
        records.append(
            StepRecord(
                step.name,
                argv,
                outcome.ok,
                outcome.exit_code,
                outcome.duration,
                outcome.stdout,
                outcome.stderr,
                error,
            )
        )
        if on_step:
            on_step(records)
        if not outcome.ok and not step.continue_on_error:
            break
    return records
