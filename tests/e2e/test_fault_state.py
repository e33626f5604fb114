"""Faults under the state files: a full disk under the agent's state dir, and a corrupt or locked
SQLite file (the agent's journal and the control plane's database).

What each must do, on real processes and real files:

- **full disk** (a 3 MiB tmpfs as the state dir, filled to the last byte): the agent stays up,
  says so (an ERROR log line naming the file, and ``STATUS=DEGRADED`` to systemd, read here from
  a real ``NOTIFY_SOCKET``), runs no step without a recorded intent, and recovers by itself once
  space is freed (the fault is then fixed);
- **corrupt file**: the process exits at once, non-zero (65: waiting will not cure it), with the
  path and what to do, no traceback, and leaves the file as it was (evidence, not overwritten);
- **locked file**: the process waits a bounded time (SQLite's 10 s busy timeout), then exits
  75 (a later restart may succeed) with the path and how to find the holder; released in time,
  it starts normally. A lock taken while the agent runs degrades it for the lock's duration.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from agent.journal import Journal

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def wait_until(what: str, predicate: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class LocalAgent:
    """One agent process on local policies: its fault is a missing flag file, its fix a shell
    step that appends the wall time to ``marker`` (outside the state dir) and touches the flag.
    Each run of the step can then be matched to the intent that authorised it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.state.mkdir()
        self.flag = root / "flag"
        self.marker = root / "marker"
        self.log = root / "agent.log"
        self.notify_path = root / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        self.statuses: list[str] = []
        policies = root / "policies"
        policies.mkdir()
        self.config = root / "agent.yaml"
        self.config.write_text(
            yaml.safe_dump({"apiVersion": "stanch.dev/v1", "kind": "AgentConfig",
                            "host": {"id": "fault-state"}})
        )  # fmt: skip
        step = f"date +%s.%N >> {self.marker}; touch {self.flag}"
        (policies / "flag.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "stanch.dev/v1",
                    "kind": "Policy",
                    "metadata": {"name": "flag"},
                    "spec": {
                        "checks": {"f": {"type": "file", "path": str(self.flag),
                                         "interval": "1s"}},
                        "rule": {"when": {"check": "f", "metric": "exists", "op": "<",
                                          "value": 1}},
                        "remediation": {"steps": [{"name": "fix", "run": step, "shell": True}]},
                        "verify": {"settle": "100ms", "timeout": "2s", "interval": "100ms"},
                        "guardrails": {"cooldown": "0s", "budget": {"max": 1000, "per": "1h"},
                                       "breaker": {"after": 1000}},
                    },
                }
            )
        )  # fmt: skip
        self.argv = [sys.executable, "-m", "agent.cli", "--config", str(self.config)]
        self.argv += ["--state-dir", str(self.state), "run", "--policies", str(policies)]
        self.argv += ["--log-format", "text"]
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "STANCH_FAILPOINTS"}
        env["NOTIFY_SOCKET"] = str(self.notify_path)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        return self.proc

    def run_once(self, timeout: float) -> tuple[int, float, str]:
        """Start the agent and wait for it to exit: (code, seconds, what it printed)."""
        start = time.monotonic()
        done = subprocess.run(
            self.argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )
        return done.returncode, time.monotonic() - start, done.stdout + done.stderr

    def started(self) -> bool:
        assert self.proc is not None
        with contextlib.suppress(Exception):
            journal = Journal(self.state / "state.db")
            try:
                return bool(journal.agent_state().get("pid") == self.proc.pid)
            finally:
                journal.close()
        return False

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def lines(self, event: str) -> list[str]:
        return [line for line in self.text().splitlines() if f" {event} " in f"{line} "]

    def read_statuses(self) -> list[str]:
        """Every ``STATUS=`` the agent sent to its notify socket so far."""
        while True:
            try:
                data = self.notify.recv(4096).decode()
            except BlockingIOError:
                return self.statuses
            self.statuses += [ln[7:] for ln in data.splitlines() if ln.startswith("STATUS=")]

    def runs(self) -> list[float]:
        return [float(t) for t in self.marker.read_text().split()] if self.marker.exists() else []

    def executions(self) -> list[sqlite3.Row]:
        db = sqlite3.connect(f"file:{self.state / 'state.db'}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            return list(db.execute("SELECT * FROM executions ORDER BY started_at"))
        finally:
            db.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.notify.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    rig = LocalAgent(tmp_path)
    try:
        yield rig
    finally:
        rig.stop()


def assert_every_run_had_an_intent(rig: LocalAgent) -> None:
    """Each step run maps to one execution row committed before it (crash-safety rule)."""
    starts = [e["started_at"] for e in rig.executions()]
    ids = [e["id"] for e in rig.executions()]
    owners: dict[str, int] = {}
    for t in rig.runs():
        before = [i for i, s in enumerate(starts) if s <= t]
        assert before, f"a step ran at {t:.3f} with no intent recorded before it"
        owners[ids[before[-1]]] = owners.get(ids[before[-1]], 0) + 1
    assert all(n == 1 for n in owners.values()), f"an intent ran its step twice: {owners}"


def clean_exit_message(out: str, path: Path) -> None:
    assert "Traceback" not in out, out
    assert str(path) in out, out


# ---- full disk -------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the state dir needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full (ENOSPC); the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        while True:
            try:
                written += f.write(chunk)
            except OSError:
                break
        with contextlib.suppress(OSError):
            while f.write(b"\0"):
                written += 1
    return written


def test_full_disk_under_the_state_dir_degrades_cleanly_and_recovers(agent: LocalAgent) -> None:
    with small_tmpfs(agent.state, "3m"):
        agent.flag.touch()
        proc = agent.spawn()
        wait_until("the agent to start", agent.started, 30)
        filler = agent.state / "filler"
        assert fill(filler) > 0
        full_at = time.time()
        agent.flag.unlink()  # the fault shows up while the disk is full

        wait_until(
            "the agent to report its journal unwritable",
            lambda: agent.lines("journal_unwritable") or proc.poll() is not None,
            40,
        )
        assert proc.poll() is None, agent.text()[-3000:]
        time.sleep(4)  # a few probe rounds while still full
        assert proc.poll() is None, f"the agent exited on a full disk:\n{agent.text()[-3000:]}"
        line = agent.lines("journal_unwritable")[0]
        assert "disk is full" in line and str(agent.state / "state.db") in line, line
        assert "no remediation starts until its intent can be recorded" in line, line
        degraded = [s for s in agent.read_statuses() if s.startswith("DEGRADED")]
        assert degraded and str(agent.state / "state.db") in degraded[-1], agent.statuses

        freed = time.time()
        filler.unlink()
        wait_until("the agent to say its journal is writable", lambda: agent.lines(
            "journal_writable"), 20)  # fmt: skip
        wait_until("the fault to be fixed after the disk was freed", agent.flag.exists, 20)
        # A new fault once writable: acted on and recorded as fixed. (The first one may have been
        # fixed by a step whose result could not be written: that row stays running until the
        # next start marks it interrupted, never re-run.)
        agent.flag.unlink()
        wait_until(
            "a new fault fixed and recorded after the recovery",
            lambda: [e for e in agent.executions() if e["status"] == "fixed"
                     and e["started_at"] >= freed],
            20,
        )  # fmt: skip
        assert proc.poll() is None
        statuses = agent.read_statuses()
        assert statuses and not statuses[-1].startswith("DEGRADED"), statuses
        # the same process all along, and no log storm: one error line per 30 s at most
        elapsed = time.time() - full_at
        assert len(agent.lines("journal_unwritable")) <= 1 + elapsed / 30
        assert "Traceback" not in agent.text()
        assert_every_run_had_an_intent(agent)
        print(f"full disk: recovered, new fault fixed {time.time() - freed:.1f}s after freeing")
        agent.stop()
        assert proc.returncode == 0, agent.text()[-2000:]


# ---- corrupt files ---------------------------------------------------------------------------


def make_journal(rig: LocalAgent) -> Path:
    """A real journal with history: run the agent through a few fixes, then stop it."""
    proc = rig.spawn()
    wait_until("the agent to start", rig.started, 30)
    for _ in range(3):
        rig.flag.unlink(missing_ok=True)
        wait_until("a fix", rig.flag.exists, 15)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    return rig.state / "state.db"


def test_a_journal_that_is_not_a_database_stops_the_agent_at_once(agent: LocalAgent) -> None:
    db = agent.state / "state.db"
    garbage = os.urandom(64 * 1024)
    db.write_bytes(garbage)
    for _ in range(3):  # as systemd restarts it: each start says the same, quickly
        code, seconds, out = agent.run_once(30)
        assert code == 65, out
        assert seconds < 10, seconds
        clean_exit_message(out, db)
        assert "corrupt or not a SQLite database" in out and f"mv {db} {db}.corrupt" in out, out
    assert db.read_bytes() == garbage  # the evidence is left as it was


def test_a_journal_with_corrupt_pages_stops_the_agent_with_the_file_named(
    agent: LocalAgent,
) -> None:
    db = make_journal(agent)
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    assert len(data) >= 3 * page, len(data)
    data[page:] = os.urandom(len(data) - page)  # keep the header page, smash every other one
    db.write_bytes(bytes(data))
    with contextlib.suppress(FileNotFoundError):
        (agent.state / "state.db-wal").unlink()
    code, seconds, out = agent.run_once(60)
    assert code == 65, out
    clean_exit_message(out, db)
    assert "corrupt" in out, out


# ---- locked files ----------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's write transaction on ``path`` (here: this test's connection)."""
    db = sqlite3.connect(str(path), isolation_level=None, timeout=10)
    db.execute("BEGIN EXCLUSIVE")
    try:
        yield db
    finally:
        db.execute("ROLLBACK")
        db.close()


def test_a_locked_journal_makes_the_agent_wait_then_exit_clearly(agent: LocalAgent) -> None:
    db = make_journal(agent)
    with exclusive_lock(db):
        code, seconds, out = agent.run_once(60)
    assert code == 75, out
    assert 9 <= seconds < 30, seconds  # it waited the busy timeout, boundedly
    clean_exit_message(out, db)
    assert "locked by another process" in out and f"fuser -v {db}" in out, out


def test_a_journal_lock_released_in_time_lets_the_agent_start(agent: LocalAgent) -> None:
    db = make_journal(agent)
    with exclusive_lock(db):
        proc = agent.spawn()
        time.sleep(3)
        assert proc.poll() is None  # waiting, not failing
    wait_until("the agent to start once the lock is gone", agent.started, 30)
    agent.flag.unlink(missing_ok=True)
    wait_until("a fix", agent.flag.exists, 15)


def test_a_lock_held_while_the_agent_runs_degrades_it_then_it_recovers(agent: LocalAgent) -> None:
    db = make_journal(agent)
    proc = agent.spawn()
    wait_until("the agent to start", agent.started, 30)
    with exclusive_lock(db):
        agent.flag.unlink()
        wait_until("the lock reported", lambda: agent.lines("journal_unwritable"), 30)
        assert proc.poll() is None
        line = agent.lines("journal_unwritable")[0]
        assert "locked by another process" in line and str(db) in line, line
    wait_until("the agent to recover", lambda: agent.lines("journal_writable"), 20)
    wait_until("the fault fixed after the lock went", agent.flag.exists, 20)
    assert proc.poll() is None
    assert_every_run_had_an_intent(agent)


# ---- the control plane's database --------------------------------------------------------------


def control_plane(tmp: Path, db: Path, timeout: float) -> tuple[int, float, str]:
    """Start ``stanch-cp`` on ``db``; it must exit by itself within ``timeout``."""
    keys = tmp / "keys"
    if not (tmp / "assign.key").exists():
        for name in ("assign", "keys/release"):
            subprocess.run(
                [sys.executable, "-m", "controlplane.opsctl", "keys", "generate", str(tmp / name)],
                cwd=REPO, check=True, capture_output=True,
            )  # fmt: skip
    argv = [sys.executable, "-m", "controlplane.server", "--insecure", "--db", str(db)]
    argv += ["--listen", "127.0.0.1:0", "--assignment-key", str(tmp / "assign.key")]
    argv += ["--trust", str(keys), "--log-format", "text"]
    start = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return done.returncode, time.monotonic() - start, done.stdout + done.stderr


def test_a_corrupt_control_plane_database_is_named_and_exits(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    garbage = os.urandom(32 * 1024)
    db.write_bytes(garbage)
    code, seconds, out = control_plane(tmp_path, db, 30)
    assert code != 0 and seconds < 15, (code, seconds, out)
    clean_exit_message(out, db)
    assert "corrupt or not a SQLite database" in out and f"mv {db} {db}.corrupt" in out, out
    assert db.read_bytes() == garbage


def test_a_locked_control_plane_database_waits_then_exits_clearly(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    sqlite3.connect(str(db)).close()
    with exclusive_lock(db):
        code, seconds, out = control_plane(tmp_path, db, 60)
    assert code != 0 and 9 <= seconds < 30, (code, seconds, out)
    clean_exit_message(out, db)
    assert "locked by another process" in out, out
