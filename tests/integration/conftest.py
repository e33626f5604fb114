"""Harness for agent integration tests: real policies on disk, a real agent, real processes.

- ``wait_for``: the one way a test waits. Every loop is bounded in time and says what it waited
  for when it gives up.
- ``procs``: every process a test (or the agent it runs) starts is found again and killed in
  teardown: by pid, by pidfile, and by a mark in its command line (the test's tmp dir, or a
  token the test registers).
- ``service``: a fake daemon (fork, setsid, fork, stdio to /dev/null, pidfile written
  atomically, sleep forever), started the way an init script would, and restarted by the
  policies' steps with the same command.
- ``harness``: policies written as YAML into a tmp dir, an ``AgentConfig`` with a ``log`` sink
  (escalations become JSON lines a test can read), and the agent itself, either in a background
  thread (``start``) or as a real ``python -m agent.cli run`` subprocess (``spawn``). The CLI
  (``cli``) and a journal reader work against the same state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import yaml

from agent.config import AgentConfig, parse_config
from agent.journal import DecisionRow, ExecutionRow, Journal
from agent.runner import Agent

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
FAST_VERIFY = {"settle": "200ms", "timeout": "3s", "interval": "200ms"}
"""Verification for steps that fix the problem: the first re-check usually clears it."""
SHORT_VERIFY = {"settle": "200ms", "timeout": "1s", "interval": "200ms"}
"""Verification for steps that do not fix the problem: give up quickly."""
NO_STORM = {"percent": 100, "min_firing": 1000}


# ---- waiting -----------------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that. Fails the test
    after ``timeout`` seconds, saying what it waited for (and ``describe()``, the state seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\n{describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


# ---- processes ---------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (dead, not yet reaped) counts as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def find_processes(mark: str) -> list[psutil.Process]:
    """Live processes with ``mark`` in one of their command-line arguments."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(mark in arg for arg in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and, when it leads a process group other than ours, the whole group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        pgid = os.getpgid(pid)
        if pgid == pid and pgid != os.getpgid(0):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class ProcessTracker:
    """Remembers what a test started; ``cleanup`` kills all of it (called in teardown)."""

    pids: set[int] = field(default_factory=set)
    pidfiles: set[Path] = field(default_factory=set)
    marks: set[str] = field(default_factory=set)

    alive = staticmethod(pid_alive)
    find = staticmethod(find_processes)
    kill_tree = staticmethod(kill_tree)

    def cleanup(self) -> None:
        for pidfile in self.pidfiles:
            with contextlib.suppress(OSError, ValueError):
                self.pids.add(int(pidfile.read_text().split()[0]))
        for pid in self.pids:
            kill_tree(pid)
        for mark in self.marks:
            for proc in find_processes(mark):
                kill_tree(proc.pid)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessTracker]:
    tracker = ProcessTracker(marks={str(tmp_path)})
    yield tracker
    tracker.cleanup()


# ---- the fake service --------------------------------------------------------------------------

SERVICE_SCRIPT = textwrap.dedent(
    '''\
    """A minimal daemon: fork, setsid, fork, stdio to /dev/null, pidfile, sleep forever.
    The first process exits once the daemon has written its pidfile (as an init script's
    start command does). Usage: service.py PIDFILE [STARTS_LOG]"""
    import os, select, sys, time

    pidfile = sys.argv[1]
    starts = sys.argv[2] if len(sys.argv) > 2 else None
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        ready, _, _ = select.select([r], [], [], 10)
        sys.exit(0 if ready and os.read(r, 8) == b"ok" else 1)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    tmp = f"{pidfile}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{os.getpid()}\\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, pidfile)
    if starts:
        with open(starts, "a") as fh:
            fh.write(f"{os.getpid()}\\n")
    os.write(w, b"ok")
    os.close(w)
    while True:
        time.sleep(3600)
    '''
)


@dataclass
class FakeService:
    script: Path
    pidfile: Path
    starts: Path
    """One line (the pid) per start, whoever started it."""
    tracker: ProcessTracker

    @property
    def command(self) -> list[str]:
        """The argv that starts it: what a restart step runs."""
        return [sys.executable, str(self.script), str(self.pidfile), str(self.starts)]

    def start(self) -> int:
        subprocess.run(self.command, check=True, timeout=15)
        pid = self.pid()
        assert pid is not None and pid_alive(pid)
        self.tracker.pids.add(pid)
        return pid

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def alive(self) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def kill(self) -> int:
        """SIGKILL the running service; returns the pid it had."""
        pid = self.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 5, what=f"service pid {pid} to die")
        return pid

    def start_count(self) -> int:
        return len(self.starts.read_text().splitlines()) if self.starts.exists() else 0


@pytest.fixture
def service(tmp_path: Path, procs: ProcessTracker) -> FakeService:
    script = tmp_path / "service.py"
    script.write_text(SERVICE_SCRIPT)
    svc = FakeService(script, tmp_path / "service.pid", tmp_path / "service.starts", procs)
    procs.pidfiles.add(svc.pidfile)
    return svc


# ---- policies ----------------------------------------------------------------------------------


def policy_yaml(
    name: str,
    *,
    checks: dict[str, dict[str, Any]],
    when: dict[str, Any],
    steps: list[dict[str, Any]],
    unless: list[dict[str, Any]] | None = None,
    mode: str = "auto",
    verify: dict[str, Any] | None = None,
    guardrails: dict[str, Any] | None = None,
    runbook: str | None = None,
) -> str:
    """A policy document as an operator would write it (see ``policies/*.yaml``)."""
    rule: dict[str, Any] = {"when": when}
    if unless:
        rule["unless"] = unless
    doc = {
        "apiVersion": "stanch.dev/v1",
        "kind": "Policy",
        "metadata": {"name": name, "labels": {"suite": "integration"}},
        "spec": {
            "severity": "critical",
            "runbook": runbook or f"https://runbooks.example.com/{name}",
            "manual_minutes": 15,
            "mode": mode,
            "checks": checks,
            "rule": rule,
            "remediation": {"steps": steps},
            "verify": verify or FAST_VERIFY,
            "guardrails": guardrails or {"cooldown": "0s", "budget": {"max": 5, "per": "1h"}},
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def file_check(path: Path) -> dict[str, Any]:
    return {"type": "file", "path": str(path), "interval": "1s"}


def process_check(pidfile: Path, interval: str = "1s") -> dict[str, Any]:
    return {"type": "process", "pidfile": str(pidfile), "interval": interval, "watch": True}


MISSING = {"metric": "exists", "op": "<", "value": 1}
"""Rule leaf for a file check: fires while the file does not exist."""
DOWN = {"metric": "count", "op": "<", "value": 1}
"""Rule leaf for a process check: fires while no process matches."""


def step(name: str, argv: list[str], timeout: str = "10s", **extra: Any) -> dict[str, Any]:
    return {"name": name, "run": argv, "timeout": timeout, **extra}


def shell_step(name: str, script: str, timeout: str = "10s", **extra: Any) -> dict[str, Any]:
    return {"name": name, "run": script, "shell": True, "timeout": timeout, **extra}


def flag_policy(name: str, flag: Path, fix: bool = True, **kwargs: Any) -> str:
    """Fires while ``flag`` is missing; the step creates it (``fix``) or only says so."""
    steps = kwargs.pop("steps", None) or [
        step("create-flag", ["touch", str(flag)])
        if fix
        else step("try-something", ["echo", f"tried to fix {name}"])
    ]
    checks = {"flag": file_check(flag)}
    when = {"check": "flag", **MISSING}
    return policy_yaml(name, checks=checks, when=when, steps=steps, **kwargs)


# ---- the agent ---------------------------------------------------------------------------------


class AgentHarness:
    """One agent's directories, config, journal reader and CLI, for an in-thread or a
    subprocess agent. Teardown stops whatever runs and kills what it started.

    The policy builders and ``wait_for`` hang off it too, so tests need no import of this
    module (two ``conftest`` modules in one session would shadow each other)."""

    FAST_VERIFY = FAST_VERIFY
    SHORT_VERIFY = SHORT_VERIFY
    MISSING = MISSING
    DOWN = DOWN
    wait_for = staticmethod(wait_for)
    policy_yaml = staticmethod(policy_yaml)
    flag_policy = staticmethod(flag_policy)
    file_check = staticmethod(file_check)
    process_check = staticmethod(process_check)
    step = staticmethod(step)
    shell_step = staticmethod(shell_step)

    def __init__(self, root: Path, tracker: ProcessTracker) -> None:
        self.root = root
        self.tracker = tracker
        self.policies_dir = root / "policies"
        self.state_dir = root / "state"
        self.notify_log = root / "notify.jsonl"
        self.agent_log = root / "agent.log"
        self.policies_dir.mkdir()
        self.raw: dict[str, Any] = {
            "host": {"id": "test-host", "labels": {"role": "test"}},
            "limits": {"max_concurrency": 2, "max_runs_per_hour": 100},
            "storm": dict(NO_STORM),
            "sinks": {"log": {"type": "log", "path": str(self.notify_log)}},
            "escalation": {"default_sinks": ["log"]},
        }
        self.agent: Agent | None = None
        self._thread: threading.Thread | None = None
        self._errors: list[BaseException] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: Journal | None = None

    # -- setup --

    def write_policy(self, filename: str, text: str) -> Path:
        """Write (atomically) ``filename`` in the policy directory; ``name`` means name.yaml."""
        if "." not in filename:
            filename += ".yaml"
        path = self.policies_dir / filename
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return path

    def configure(self, **raw: Any) -> None:
        """Override agent config keys, e.g. ``limits={...}``, ``storm={...}``."""
        self.raw.update(raw)

    def config(self) -> AgentConfig:
        return parse_config(
            self.raw, "<test>", policies_dir=self.policies_dir, state_dir=self.state_dir
        )

    # -- in-thread agent --

    def start(self) -> Agent:
        """Run ``Agent.run()`` in a background thread."""
        assert self._thread is None, "an agent is already running"
        agent = Agent(self.config())
        self.agent = agent

        def main() -> None:
            try:
                agent.run(drain_timeout=10.0)
            except BaseException as exc:  # reported by stop(): a crashed loop fails the test
                self._errors.append(exc)

        self._thread = threading.Thread(target=main, name="agent-under-test", daemon=True)
        self._thread.start()
        return agent

    def stop(self, timeout: float = 20.0) -> None:
        if self._thread is None or self.agent is None:
            return
        self.agent.request_stop()
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._thread = None
        assert not alive, f"agent did not stop within {timeout:g}s"
        if self._errors:
            raise self._errors[0]

    # -- subprocess agent --

    def write_config_file(self) -> Path:
        path = self.root / "agent.yaml"
        doc = {
            "apiVersion": "stanch.dev/v1",
            "kind": "AgentConfig",
            **self.raw,
            "policies": str(self.policies_dir),
            "state_dir": str(self.state_dir),
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def spawn(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``python -m agent.cli run`` as a real process (its own session)."""
        assert self.proc is None or self.proc.poll() is not None, "an agent process is running"
        config = self.write_config_file()
        argv = [sys.executable, "-m", "agent.cli", "--config", str(config)]
        argv += ["--state-dir", str(self.state_dir), "run", "--policies", str(self.policies_dir)]
        with open(self.agent_log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.tracker.pids.add(self.proc.pid)
        return self.proc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    # -- CLI --

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``stanch-agent --state-dir D ARGS`` as a subprocess."""
        argv = [sys.executable, "-m", "agent.cli", "--state-dir", str(self.state_dir), *args]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        if check:
            assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
        return done

    # -- reading what happened --

    @property
    def journal(self) -> Journal:
        """A reader on the agent's state file (opened once the agent has created it)."""
        if self._reader is None:
            db = self.state_dir / "state.db"

            def migrated() -> bool:
                if not db.exists():
                    return False
                conn = sqlite3.connect(str(db), timeout=5)
                try:
                    return int(conn.execute("PRAGMA user_version").fetchone()[0]) >= 1
                finally:
                    conn.close()

            wait_for(migrated, 15, what=f"the agent to create {db}")
            self._reader = Journal(db)
        return self._reader

    def decisions(self, policy: str) -> list[DecisionRow]:
        """Oldest first."""
        return list(reversed(self.journal.decisions(policy, limit=500)))

    def outcomes(self, policy: str) -> list[tuple[str, str]]:
        return [(d.outcome, d.reason) for d in self.decisions(policy)]

    def executions(self, policy: str | None = None) -> list[ExecutionRow]:
        """Oldest first."""
        return list(reversed(self.journal.executions(policy, limit=500)))

    def escalations(self, reason: str | None = None) -> list[dict[str, Any]]:
        """Notifications the ``log`` sink delivered, oldest first."""
        if not self.notify_log.exists():
            return []
        rows = [json.loads(line) for line in self.notify_log.read_text().splitlines() if line]
        return [r for r in rows if reason is None or r["reason"] == reason]

    def describe(self, policy: str | None = None) -> str:
        """What the agent recorded so far, for failure messages."""
        lines = []
        with contextlib.suppress(Exception):
            for d in reversed(self.journal.decisions(policy, limit=30)):
                lines.append(
                    f"  decision {d.policy}: {d.outcome}/{d.reason} x{d.repeat} {d.message}"
                )
            for e in reversed(self.journal.executions(policy, limit=10)):
                lines.append(f"  execution {e.policy} {e.id}: {e.status} {e.error or ''}")
        if self.agent_log.exists():
            tail = self.agent_log.read_text(errors="replace").splitlines()[-15:]
            lines += ["  agent log:", *(f"    {line}" for line in tail)]
        return "\n".join(lines) or "  (nothing recorded)"

    def wait_decision(
        self,
        policy: str,
        outcome: str,
        reason: str | None = None,
        timeout: float = 10.0,
        after: float = 0.0,
    ) -> DecisionRow:
        """The first decision for ``policy`` with this outcome (and reason), at or after
        wall time ``after``."""

        def found() -> DecisionRow | None:
            for d in self.decisions(policy):
                if d.outcome == outcome and reason in (None, d.reason) and d.last_at >= after:
                    return d
            return None

        what = f"decision {outcome}/{reason or '*'} for {policy}"
        return wait_for(found, timeout, what=what, describe=lambda: self.describe(policy))

    def wait_executions(
        self, policy: str, count: int, status: str | None = None, timeout: float = 10.0
    ) -> list[ExecutionRow]:
        """Wait until ``policy`` has ``count`` executions (with ``status``); return them."""

        def found() -> list[ExecutionRow] | None:
            rows = [e for e in self.executions(policy) if status in (None, e.status)]
            return rows if len(rows) >= count else None

        what = f"{count} execution(s) {status or ''} for {policy}"
        return wait_for(found, timeout, what=what, describe=lambda: self.describe(policy))

    def wait_escalation(self, reason: str, timeout: float = 10.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            rows = self.escalations(reason)
            return rows[0] if rows else None

        return wait_for(
            found, timeout, what=f"an escalation {reason!r}", describe=lambda: self.describe()
        )

    def shutdown(self) -> None:
        """Teardown: stop the agent(s) first so nothing new starts, then kill the rest."""
        errors: list[BaseException] = []
        if self.agent is not None:
            self.agent.request_stop()
        self.tracker.cleanup()  # ends running steps so the drain is quick
        try:
            self.stop()
        except BaseException as exc:
            errors.append(exc)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.tracker.cleanup()
        if self._reader is not None:
            self._reader.close()
        if errors:
            raise errors[0]


@pytest.fixture
def harness(tmp_path: Path, procs: ProcessTracker) -> Iterator[AgentHarness]:
    h = AgentHarness(tmp_path, procs)
    yield h
    h.shutdown()
