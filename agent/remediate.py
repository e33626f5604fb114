"""Run a policy's remediation steps: the runbook commands an engineer would have typed.

Steps are argv lists run without a shell (``shell: true`` must be asked for in the policy). Values
from checks enter argv only as whole arguments: ``["kill", "-9", "{{ runaway.pid }}"]`` becomes
``["kill", "-9", "4242"]`` whatever the value holds, because it is never spliced into a string a
shell would parse. Commands go through a ``CommandRunner`` so tests can inject one.

Hygiene, for every step: the environment is the scrubbed allowlist of ``agent.subproc`` plus the
policy's ``env`` (no NOTIFY_SOCKET, no tokens); with ``run_as`` the step runs under that account
(``agent.runas``: resolved before the step, HOME/USER/LOGNAME set, cwd checked reachable, ``/``
by default); and the output, error and argv recorded for it pass through the redactor before
``on_step`` (the journal) sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.checks.base import MetricValue
from agent.policy.loader import TEMPLATE_RE
from agent.policy.model import Step
from agent.redact import DEFAULT_REDACTOR, Redactor
from agent.runas import Account, RunAsError, cwd_problem, environment, resolve
from agent.subproc import DEFAULT_OUTPUT_LIMIT, Outcome, run_bounded, scrubbed_env


class CommandRunner(Protocol):
    """Runs one step. ``account`` is passed (as a keyword) only for a step with ``run_as``."""

    def run(
        self, argv: Sequence[str], timeout: float, env: Mapping[str, str], cwd: str | None
    ) -> Outcome: ...


class SubprocessRunner:
    """Runs real processes in their own session, killed as a group at the timeout.

    ``redactor`` is the agent config's (``AgentConfig.redactor``); ``Remediation`` applies it to
    what the steps print. Without one, the built-in patterns apply."""

    def __init__(
        self, output_limit: int = DEFAULT_OUTPUT_LIMIT, redactor: Redactor | None = None
    ) -> None:
        self.output_limit = output_limit
        self.redactor = redactor or DEFAULT_REDACTOR

    def run(
        self,
        argv: Sequence[str],
        timeout: float,
        env: Mapping[str, str],
        cwd: str | None,
        account: Account | None = None,
    ) -> Outcome:
        if account is None:
            return run_bounded(argv, timeout, env=env, cwd=cwd, output_limit=self.output_limit)
        return run_bounded(
            argv,
            timeout,
            env=env,
            cwd=cwd,
            output_limit=self.output_limit,
            user=account.uid,
            group=account.gid,
            extra_groups=account.groups,
        )


def redactor_of(runner: object) -> Redactor:
    """The redactor a runner carries (``SubprocessRunner``), else the built-in one."""
    found = getattr(runner, "redactor", None)
    return found if isinstance(found, Redactor) else DEFAULT_REDACTOR


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

    def redacted(self, redactor: Redactor) -> StepRecord:
        return StepRecord(
            self.name,
            tuple(redactor.redact(a) for a in self.argv),
            self.ok,
            self.exit_code,
            self.duration,
            redactor.redact(self.stdout),
            redactor.redact(self.stderr),
            redactor.redact(self.error) if self.error else self.error,
        )

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
    redactor: Redactor | None = None,
    euid: int | None = None,
) -> list[StepRecord]:
    """Run steps in order; stop at the first failure unless the step says continue_on_error.
    ``on_step`` sees the records so far after each step (the journal saves them as they come),
    already redacted (``redactor``, default: the runner's). ``base_env`` is set for every step
    under the step's own ``env``. ``euid`` stands in for the agent's effective uid (tests)."""
    redactor = redactor or redactor_of(runner)
    records: list[StepRecord] = []
    for step in steps:
        try:
            argv = render_argv(step, values)
            account, cwd = _account(step, euid)
        except (TemplateError, RunAsError) as exc:
            record = StepRecord(step.name, step.argv, False, None, 0.0, "", "", str(exc))
            records.append(record.redacted(redactor))
            if on_step:
                on_step(records)
            if isinstance(exc, TemplateError) or not step.continue_on_error:
                break
            continue
        login = environment(account) if account else {}
        env = scrubbed_env({**login, **(base_env or {}), **dict(step.env)})
        if account is None:
            outcome = runner.run(argv, step.timeout, env, cwd)
        else:
            # Keyword only when switching: a runner that cannot switch users fails loudly
            # (TypeError: the remediation fails at its boundary) instead of running as root.
            outcome = runner.run(argv, step.timeout, env, cwd, account=account)  # type: ignore[call-arg]  # noqa: E501
        error = outcome.error
        if error is None and outcome.exit_code != 0:
            error = f"exited with status {outcome.exit_code}"
        record = StepRecord(
            step.name,
            argv,
            outcome.ok,
            outcome.exit_code,
            outcome.duration,
            outcome.stdout,
            outcome.stderr,
            error,
        )
        records.append(record.redacted(redactor))
        if on_step:
            on_step(records)
        if not outcome.ok and not step.continue_on_error:
            break
    return records


def _account(step: Step, euid: int | None) -> tuple[Account | None, str | None]:
    """The account for a ``run_as`` step and its working directory (``/`` unless set), or
    RunAsError; (None, step.cwd) for a step that runs as the agent."""
    if step.run_as is None:
        return None, step.cwd
    account = resolve(step.run_as, euid)
    cwd = step.cwd or "/"
    problem = cwd_problem(cwd, account)
    if problem:
        raise RunAsError(f"run_as {account.name}: {problem}")
    return account, cwd
