"""Least privilege and hygiene on the host, with real processes and the real agent loop:

- a check value such as ``$(...)``, ``; ...``, `` `...` `` or ``a b`` reaches the command as ONE
  literal argument (policy -> check -> rule -> remediation), and a shell string cannot be
  templated at all;
- remediation commands get the scrubbed environment (no NOTIFY_SOCKET, WATCHDOG_*, tokens);
- ``run_as`` runs a step as that user with that user's groups, HOME, USER and LOGNAME;
- step output, the escalation payload and the agent's logs carry no secret.

The injection payloads touch marker files instead of doing harm: were a value ever evaluated by a
shell, the marker would exist (a real ``$(reboot)`` in a failing test would reboot the machine).
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agent.checks import CHECK_TYPES
from agent.checks.base import Check, CheckEnv, CheckType, Sample
from agent.policy.fields import Fields
from agent.policy.loader import load_text
from agent.policy.model import RunAs, Step
from agent.redact import REDACTED
from agent.remediate import SubprocessRunner, run_steps
from agent.runner import Agent

if TYPE_CHECKING:
    from conftest import AgentHarness

PRINT_ARGV = "import sys, json; print(json.dumps(sys.argv[1:]))"
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="switching users (run_as) needs root")


# ---- a check whose result is text read from a file -----------------------------------------


@dataclass(frozen=True)
class TextConfig:
    path: str


class TextCheck:
    """The first line of a file as the string metric ``text``: an attacker-controlled value
    (a hostname in a status file, a unit name from a log) as a real check would report it."""

    def __init__(self, config: TextConfig, env: CheckEnv) -> None:
        self.path = env.host_path(config.path)

    def sample(self) -> Sample:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        return Sample({"text": lines[0] if lines else ""}, "read")


def _parse(f: Fields) -> TextConfig:
    return TextConfig(f.string("path"))


def _build(config: TextConfig, env: CheckEnv) -> Check:
    return TextCheck(config, env)


TEXT = CheckType("text_file", _parse, _build, frozenset({"text"}))


@pytest.fixture
def text_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test check type in the public registry for this test only."""
    monkeypatch.setitem(CHECK_TYPES, TEXT.name, TEXT)


def text_policy(h: AgentHarness, name: str, source: Path, **step_extra: Any) -> str:
    return h.policy_yaml(
        name,
        checks={"probe": {"type": "text_file", "path": str(source), "interval": "1s"}},
        when={"check": "probe", "metric": "text", "op": "!=", "value": ""},
        steps=[
            h.step("show", [sys.executable, "-c", PRINT_ARGV, "{{ probe.text }}"], **step_extra)
        ],
        verify=h.SHORT_VERIFY,
        guardrails={"cooldown": "1h", "budget": {"max": 1, "per": "1h"}},
    )


def test_check_values_reach_the_command_as_one_literal_argument(
    harness: AgentHarness, tmp_path: Path, text_checks: None
) -> None:
    markers = [tmp_path / f"pwned-{i}" for i in range(4)]
    payloads = [
        f"$(touch {markers[0]})",
        f"; touch {markers[1]}",
        f"`touch {markers[2]}`",
        "a b",
        f"'\"; touch {markers[3]} #",
        "*",
        "$HOME ${PATH} > /tmp/x",
    ]
    for i, payload in enumerate(payloads):
        source = tmp_path / f"value-{i}"
        source.write_text(payload + "\n")
        harness.write_policy(f"p{i}", text_policy(harness, f"inject-{i}", source))
    harness.start()
    for i, payload in enumerate(payloads):
        (run,) = harness.wait_executions(f"inject-{i}", 1, timeout=20)
        harness.wait_for(lambda r=run: harness.journal.execution(r.id).steps, 10, what="steps")
        step = harness.journal.execution(run.id).steps[0]
        assert step["argv"][-1] == payload
        assert json.loads(step["stdout"]) == [payload], step
    assert [m for m in markers if m.exists()] == []


def test_a_shell_string_cannot_be_templated() -> None:
    text = """
apiVersion: stanch.dev/v1
kind: Policy
metadata: {name: shelly}
spec:
  checks: {probe: {type: process, name: nginx}}
  rule: {when: {check: probe, metric: count, op: "<", value: 1}}
  remediation:
    steps:
      - {name: kill, shell: true, run: "kill {{ probe.pid }}"}
"""
    policies, errors = load_text(text, "policies/shelly.yaml")
    assert policies == []
    assert [str(e) for e in errors] == [
        "policies/shelly.yaml: spec.remediation.steps[0].run: check values cannot be templated "
        "into a shell string; use an argv list (shell: false) so each value stays one argument"
    ]


# ---- the environment a command gets --------------------------------------------------------

AGENT_SECRETS = {
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "WATCHDOG_USEC": "30000000",
    "WATCHDOG_PID": "1",
    "STANCH_TOKEN": "stk_abcdef_0123456789",
    "GITHUB_TOKEN": "ghp_leak",
    "DB_PASSWORD": "hunter2",
    "AWS_SECRET_ACCESS_KEY": "awsleak",
    "PAGERDUTY_ROUTING_KEY": "pdleak",
    "APP_SECRET": "appleak",
    "LISTEN_FDS": "3",
    "SOMETHING_ELSE": "not on the allowlist either",
}


def env_of(step: Step, **kw: Any) -> dict[str, str]:
    (record,) = run_steps([step], {}, SubprocessRunner(), **kw)
    assert record.ok, record
    pairs = [item.split("=", 1) for item in record.stdout.split("\0") if item]
    return dict(pairs)


@pytest.mark.parametrize("shell", [False, True], ids=["argv", "shell"])
def test_commands_get_the_allowlist_and_the_policy_env_only(
    monkeypatch: pytest.MonkeyPatch, shell: bool
) -> None:
    for key, value in AGENT_SECRETS.items():
        monkeypatch.setenv(key, value)
    policy_env = (("MODE", "fast"), ("NOTIFY_SOCKET", "/x"), ("WATCHDOG_USEC", "1"))
    argv = ("env -0",) if shell else ("env", "-0")
    env = env_of(Step("show", argv, shell, env=policy_env), base_env={"POLICY_DIR": "/p"})
    inherited = {k for k in ("HOME", "TZ", "TERM", "LC_ALL") if k in os.environ}
    assert set(env) - {"PWD", "SHLVL", "_"} == {"PATH", "LANG", "MODE", "POLICY_DIR", *inherited}
    assert env["MODE"] == "fast" and env["PATH"].startswith("/usr/local/sbin")
    leaked = [v for v in AGENT_SECRETS.values() if any(v in x for x in env.values())]
    assert leaked == []


# ---- run_as ----------------------------------------------------------------------------------


def ids_as(run_as: RunAs, cwd: str | None = None) -> list[str]:
    script = 'id -u; id -g; id -G; echo "$HOME|$USER|$LOGNAME"; pwd'
    (record,) = run_steps([Step("who", ("sh", "-c", script), cwd=cwd, run_as=run_as)], {},
                          SubprocessRunner())  # fmt: skip
    assert record.ok, record
    return record.stdout.splitlines()


@needs_root
def test_run_as_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    uid, gid, groups, login, cwd = ids_as(RunAs("nobody"))
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert {int(g) for g in groups.split()} == set(os.getgrouplist("nobody", nobody.pw_gid))
    assert login == f"{nobody.pw_dir}|nobody|nobody"
    assert cwd == "/"


@pytest.fixture
def throwaway_user() -> Iterator[tuple[str, str]]:
    """A system user with one supplementary group, deleted afterwards."""
    if not ROOT or not (shutil.which("useradd") and shutil.which("groupadd")):
        pytest.skip("needs root and useradd/groupadd to create a throwaway user")
    tag = uuid.uuid4().hex[:8]
    user, extra = f"stanch-u{tag}", f"stanch-g{tag}"

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    try:
        run("groupadd", "--system", extra)
        run("useradd", "--system", "--no-create-home", "--user-group", "--groups", extra,
            "--shell", "/usr/sbin/nologin", "--home-dir", f"/nonexistent/{user}", user)  # fmt: skip
        yield user, extra
    finally:
        with contextlib.suppress(Exception):
            run("userdel", user)
        with contextlib.suppress(Exception):
            run("groupdel", extra)
        with contextlib.suppress(Exception):
            run("groupdel", user)


def test_run_as_a_user_gets_its_supplementary_groups(throwaway_user: tuple[str, str]) -> None:
    user, extra = throwaway_user
    entry = pwd.getpwnam(user)
    uid, gid, groups, login, _ = ids_as(RunAs(user))
    assert (int(uid), int(gid)) == (entry.pw_uid, entry.pw_gid)
    assert {int(g) for g in groups.split()} == {entry.pw_gid, grp.getgrnam(extra).gr_gid}
    assert login == f"/nonexistent/{user}|{user}|{user}"
    # An explicit group replaces the primary group; supplementary groups stay the user's own.
    _, gid, groups, _, _ = ids_as(RunAs(user, extra))
    assert int(gid) == grp.getgrnam(extra).gr_gid and "0" not in groups.split()


@needs_root
def test_run_as_refuses_an_unreachable_cwd_before_running(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    marker = tmp_path / "ran"
    step = Step("w", ("touch", str(marker)), cwd=str(closed), run_as=RunAs("nobody"))
    (record,) = run_steps([step], {}, SubprocessRunner())
    assert not record.ok and record.exit_code is None
    assert "run_as nobody: cwd" in (record.error or "") and "cannot enter" in (record.error or "")
    assert not marker.exists()


def test_a_non_root_agent_never_runs_the_step_as_itself(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    step = Step("w", ("touch", str(marker)), run_as=RunAs("nobody"))
    (record,) = run_steps([step], {}, SubprocessRunner(), euid=4242)
    assert "the agent runs as uid 4242, not root" in (record.error or "")
    assert not marker.exists()


@needs_root
def test_run_as_through_the_agent(harness: AgentHarness, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    steps = [harness.step("as-nobody", ["sh", "-c", 'id -u; echo "$HOME"'])]
    doc = harness.flag_policy("nobody-fix", flag, steps=steps, verify=harness.SHORT_VERIFY)
    doc = doc.replace("  remediation:\n", "  remediation:\n    run_as: nobody\n")
    harness.write_policy("nobody", doc)
    harness.start()
    (run,) = harness.wait_executions("nobody-fix", 1, timeout=20)
    harness.wait_for(lambda: harness.journal.execution(run.id).steps, 10, what="steps")
    step = harness.journal.execution(run.id).steps[0]
    nobody = pwd.getpwnam("nobody")
    assert step["stdout"].splitlines() == [str(nobody.pw_uid), nobody.pw_dir], step


# ---- secrets stay out of output, payloads and logs -------------------------------------------


@contextlib.contextmanager
def running(agent: Agent) -> Iterator[Agent]:
    errors: list[BaseException] = []

    def main() -> None:
        try:
            agent.run(drain_timeout=10.0)
        except BaseException as exc:  # reported below: a crashed loop fails the test
            errors.append(exc)

    thread = threading.Thread(target=main, name="agent-under-test", daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.request_stop()
        thread.join(20)
        assert not thread.is_alive(), "agent did not stop within 20s"
        if errors:
            raise errors[0]


def test_secrets_never_reach_the_journal_payloads_or_logs(
    harness: AgentHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook_path = "/services/T0/B0/SINKSECRET1234"
    url_file = tmp_path / "hook.url"
    url_file.write_text(f"http://127.0.0.1:9{hook_path}\n")
    url_file.chmod(0o600)
    harness.configure(
        redact=[r"CORP-\d{6}"],
        sinks={
            "log": {"type": "log", "path": str(harness.notify_log)},
            "spare": {"type": "webhook", "url_file": str(url_file)},
        },
    )
    leaks = {
        "bearer": "Authorization: Bearer eyJleakleakleak",
        "pattern": "ticket CORP-123456",
        "sink url": f"posting to http://127.0.0.1:9{hook_path}",
        "password": "db_password=hunter2hunter2",
    }
    script = "; ".join(f"echo '{line}'" for line in leaks.values()) + "; exit 1"
    flag = tmp_path / "flag"
    steps = [harness.shell_step("leaky", script)]
    harness.write_policy(
        "leaky", harness.flag_policy("leaky", flag, steps=steps, verify=harness.SHORT_VERIFY)
    )
    config = harness.config()
    caplog.set_level(logging.DEBUG)
    with running(Agent(config, runner=SubprocessRunner(redactor=config.redactor))):
        (run,) = harness.wait_executions("leaky", 1, status="failed", timeout=20)
        payload = harness.wait_escalation("failed")
    stdout = harness.journal.execution(run.id).steps[0]["stdout"]
    assert stdout.splitlines() == [
        f"Authorization: Bearer {REDACTED}",
        f"ticket {REDACTED}",
        f"posting to http://127.0.0.1/{REDACTED}",
        f"db_password={REDACTED}",
    ]
    secrets = ["eyJleakleakleak", "CORP-123456", "SINKSECRET1234", "hunter2hunter2"]
    logged = json.dumps([getattr(r, "fields", {}) for r in caplog.records], default=str)
    assert "remediation_finished" in caplog.text and len(caplog.records) > 3
    everything = json.dumps(payload) + stdout + caplog.text + logged
    everything += harness.notify_log.read_text()
    assert REDACTED in json.dumps(payload)
    assert [s for s in secrets if s in everything] == []


def test_a_sink_error_is_redacted_before_the_journal_and_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.clock import FakeClock
    from agent.journal import Journal
    from agent.notify import Notifier
    from agent.redact import Redactor
    from agent.sinks import CommandConfig, CommandSink

    script = "echo 'upstream said: token=abcdef123456 CORP-654321' >&2; exit 1"
    sink = CommandSink(CommandConfig(("sh", "-c", script), timeout=10.0))
    journal = Journal(tmp_path / "state.db")
    try:
        notifier = Notifier(
            journal, {"page": sink}, FakeClock(), redactor=Redactor.build([r"CORP-\d{6}"])
        )
        caplog.set_level(logging.INFO)
        notifier.enqueue({"host": "h", "policy": "p"}, ["page"])
        assert notifier.deliver_due() == 0
        (row,) = journal.notifications(10)
        assert row["last_error"] == (
            f"sh: exited with status 1: upstream said: token={REDACTED} {REDACTED}"
        )
        logged = [getattr(r, "fields", {}).get("error") for r in caplog.records]
        assert row["last_error"] in logged
        assert not any("abcdef123456" in str(e) or "CORP-654321" in str(e) for e in logged)
    finally:
        journal.close()
