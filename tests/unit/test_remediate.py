"""Remediation steps: whole-argument templating and the step runner's stop/continue rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.checks.base import MetricValue
from agent.policy.model import Step
from agent.remediate import StepRecord, SubprocessRunner, TemplateError, render_argv, run_steps
from agent.subproc import SAFE_PATH, Outcome


@dataclass
class FakeRunner:
    """Answers each argv with a scripted exit code (default 0) and records every call."""

    exit_codes: dict[str, int | None] = field(default_factory=dict)
    calls: list[tuple[tuple[str, ...], float, dict[str, str], str | None]] = field(
        default_factory=list
    )

    def run(
        self, argv: Sequence[str], timeout: float, env: Mapping[str, str], cwd: str | None
    ) -> Outcome:
        argv = tuple(argv)
        self.calls.append((argv, timeout, dict(env), cwd))
        code = self.exit_codes.get(argv[0], 0)
        if code is None:
            return Outcome(argv, None, "", "", timeout, True, error=f"timed out after {timeout}s")
        return Outcome(argv, code, f"out of {argv[0]}", "", 0.01)


def step(name: str, *argv: str, **kw: Any) -> Step:
    return Step(name, argv, **kw)


# ---- templating ------------------------------------------------------------------------------


def test_plain_arguments_pass_through() -> None:
    assert render_argv(step("s", "systemctl", "restart", "nginx"), {}) == (
        "systemctl",
        "restart",
        "nginx",
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (4242.0, "4242"),
        (0.0, "0"),
        (-3.0, "-3"),
        (1.5, "1.5"),
        (2147483648.0, "2147483648"),
        ("nginx: worker", "nginx: worker"),
    ],
)
def test_values_render_as_whole_arguments(value: MetricValue, text: str) -> None:
    argv = render_argv(step("kill", "kill", "-TERM", "{{ worker.pid }}"), {"worker.pid": value})
    assert argv == ("kill", "-TERM", text)


def test_template_spacing_variants() -> None:
    values = {"w.pid": 7.0}
    assert render_argv(step("s", "{{w.pid}}", "{{  w.pid  }}"), values) == ("7", "7")


def test_missing_value_is_an_error_never_an_empty_string() -> None:
    with pytest.raises(TemplateError) as exc:
        render_argv(step("kill", "kill", "{{ worker.pid }}"), {"worker.count": 0.0})
    assert str(exc.value) == (
        "step 'kill': no value for {{ worker.pid }} (the check has not produced it)"
    )


def test_shell_steps_run_through_sh_without_templating() -> None:
    s = Step("note", ("echo {{ not.a.template }} > /dev/null",), shell=True)
    assert render_argv(s, {}) == ("/bin/sh", "-c", "echo {{ not.a.template }} > /dev/null")


@pytest.mark.parametrize(
    "value",
    [
        "a b; rm -rf /tmp/nothing-here",
        "$(id) `id` && echo pwned",
        "--help",
        "line1\nline2",
        "'quoted' \"double\"",
        "*",
    ],
)
def test_hostile_values_stay_one_argument_in_a_real_process(value: str) -> None:
    s = step("echo", "printf", "[%s]\\n", "{{ check.value }}")
    (record,) = run_steps([s], {"check.value": value}, SubprocessRunner())
    assert record.ok, record
    assert record.argv == ("printf", "[%s]\\n", value)
    assert record.stdout == f"[{value}]\n"


# ---- run_steps -------------------------------------------------------------------------------


def test_steps_run_in_order_with_their_settings() -> None:
    runner = FakeRunner()
    steps = [
        step("restart", "systemctl", "restart", "{{ web.unit }}", timeout=60.0, cwd="/srv"),
        step("reload", "nginx", "-s", "reload", env=(("MODE", "fast"),)),
    ]
    records = run_steps(steps, {"web.unit": "nginx.service"}, runner)
    assert [r.name for r in records] == ["restart", "reload"]
    assert all(r.ok and r.exit_code == 0 and r.error is None for r in records)
    (argv1, timeout1, env1, cwd1), (argv2, timeout2, env2, cwd2) = runner.calls
    assert (argv1, timeout1, cwd1) == (("systemctl", "restart", "nginx.service"), 60.0, "/srv")
    assert (argv2, timeout2, cwd2) == (("nginx", "-s", "reload"), 30.0, None)
    assert env1["PATH"] == SAFE_PATH
    assert "MODE" not in env1
    assert env2["MODE"] == "fast"
    assert records[0].stdout == "out of systemctl"


def test_stop_at_the_first_failure() -> None:
    runner = FakeRunner({"false": 1})
    steps = [step("a", "true"), step("b", "false"), step("c", "true")]
    records = run_steps(steps, {}, runner)
    assert [(r.name, r.ok, r.exit_code, r.error) for r in records] == [
        ("a", True, 0, None),
        ("b", False, 1, "exited with status 1"),
    ]
    assert len(runner.calls) == 2


def test_continue_on_error_keeps_going() -> None:
    runner = FakeRunner({"false": 3})
    steps = [step("a", "false", continue_on_error=True), step("b", "true")]
    records = run_steps(steps, {}, runner)
    assert [(r.name, r.ok, r.error) for r in records] == [
        ("a", False, "exited with status 3"),
        ("b", True, None),
    ]


def test_a_timeout_stops_the_run_with_the_runner_error() -> None:
    runner = FakeRunner({"sleep": None})
    records = run_steps([step("wait", "sleep", "100"), step("after", "true")], {}, runner)
    (record,) = records
    assert (record.ok, record.exit_code, record.error) == (False, None, "timed out after 30.0s")


def test_a_template_error_stops_the_run_before_the_command() -> None:
    runner = FakeRunner()
    steps = [step("kill", "kill", "{{ w.pid }}", continue_on_error=True), step("after", "true")]
    records = run_steps(steps, {}, runner)
    assert runner.calls == []
    (record,) = records
    assert record.name == "kill"
    assert not record.ok
    assert record.argv == ("kill", "{{ w.pid }}")
    assert record.error == "step 'kill': no value for {{ w.pid }} (the check has not produced it)"


def test_on_step_sees_the_records_so_far() -> None:
    seen: list[list[str]] = []
    steps = [step("a", "true"), step("b", "false"), step("c", "true")]
    run_steps(steps, {}, FakeRunner({"false": 1}), lambda rs: seen.append([r.name for r in rs]))
    assert seen == [["a"], ["a", "b"]]


def test_a_real_command_that_fails_and_one_that_cannot_start() -> None:
    runner = SubprocessRunner()
    records = run_steps(
        [
            step("fail", "sh", "-c", "echo oops >&2; exit 4", continue_on_error=True),
            step("missing", "/nonexistent/stanch-helper"),
        ],
        {},
        runner,
    )
    fail, missing = records
    assert (fail.ok, fail.exit_code, fail.stderr, fail.error) == (
        False,
        4,
        "oops\n",
        "exited with status 4",
    )
    assert (missing.ok, missing.exit_code) == (False, None)
    assert missing.error == ("cannot run '/nonexistent/stanch-helper': No such file or directory")


def test_step_record_to_dict() -> None:
    record = StepRecord("a", ("echo", "x"), True, 0, 0.01234, "x\n", "", None)
    assert record.to_dict() == {
        "name": "a",
        "argv": ["echo", "x"],
        "ok": True,
        "exit_code": 0,
        "duration_ms": 12.3,
        "stdout": "x\n",
        "stderr": "",
        "error": None,
    }
