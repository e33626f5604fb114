"""Process checks and the shared ProcessTable against real processes this test starts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.checks.base import WatchesPids
from agent.checks.process import ProcessCheck
from agent.checks.proctable import ProcessTable
from agent.checks.testing import build_check
from agent.errors import CheckError

Spawn = Callable[..., subprocess.Popen[bytes]]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start real processes; every one is killed and reaped at the end of the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


@pytest.fixture
def sleeper_name(tmp_path: Path) -> str:
    """A copy of sleep(1) under a name no other process on this machine has."""
    name = f"stz{uuid.uuid4().hex[:10]}"
    sleep = shutil.which("sleep")
    assert sleep is not None
    shutil.copy(sleep, tmp_path / name)
    return str(tmp_path / name)


def python(code: str, tag: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code, tag)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_name_match_counts_and_watches_real_processes(spawn: Spawn, sleeper_name: str) -> None:
    procs = [spawn(sleeper_name, "60") for _ in range(2)]
    table = ProcessTable(max_age=0.0)
    check = build_check("process", {"name": Path(sleeper_name).name}, processes=table)
    assert isinstance(check, ProcessCheck)
    sample = check.sample()
    m = sample.metrics
    assert m["count"] == 2.0 and m["zombies"] == 0.0
    assert m["pid"] in {float(p.pid) for p in procs}
    assert float(m["rss_total_bytes"]) >= float(m["rss_bytes"]) > 0
    assert float(m["open_fds"]) >= 3 and 0.0 <= float(m["age_seconds"]) < 30
    assert check.watched_pids() == {p.pid for p in procs}
    for proc in procs:
        proc.kill()
        proc.wait(timeout=5)
    m = check.sample().metrics
    assert m["count"] == 0.0 and m["pid"] == 0.0
    assert check.watched_pids() == set()


def test_cmdline_regex_and_pid_of_the_largest(spawn: Spawn) -> None:
    tag = f"stanch-test-{uuid.uuid4().hex}"
    big = spawn(*python("import time; b = bytearray(64 << 20); time.sleep(60)", tag))
    small = spawn(*python("import time; time.sleep(60)", tag))
    table = ProcessTable(max_age=0.0)
    check = build_check("process", {"cmdline": f" {tag}$"}, processes=table)
    wait_until(lambda: float(check.sample().metrics["rss_bytes"]) > 60 << 20)
    m = check.sample().metrics
    assert m["count"] == 2.0 and m["pid"] == float(big.pid)
    assert isinstance(check, WatchesPids)
    assert check.watched_pids() == {big.pid, small.pid}


def test_own_process_never_matches() -> None:
    check = build_check("process", {"cmdline": "."}, processes=ProcessTable())
    check.sample()
    assert isinstance(check, ProcessCheck)
    assert os.getpid() not in check.watched_pids()


def test_watch_false_exposes_no_pids(spawn: Spawn, sleeper_name: str) -> None:
    spawn(sleeper_name, "60")
    raw = {"name": Path(sleeper_name).name, "watch": False}
    check = build_check("process", raw, processes=ProcessTable())
    assert isinstance(check, ProcessCheck)
    assert check.sample().metrics["count"] == 1.0
    assert check.watched_pids() == set()


def test_pidfile_live_stale_missing_and_garbage(spawn: Spawn, tmp_path: Path) -> None:
    clock = Clock()
    table = ProcessTable(clock_monotonic=clock, max_age=10.0)
    check = build_check("process", {"pidfile": "/run/app.pid"}, root=tmp_path, processes=table)
    (tmp_path / "run").mkdir()
    pidfile = tmp_path / "run" / "app.pid"
    sample = check.sample()
    assert sample.metrics["count"] == 0.0 and "no pidfile" in sample.summary
    # Started after the (still fresh) snapshot was taken: found by a direct lookup.
    proc = spawn("sleep", "60")
    pidfile.write_text(f"{proc.pid}\n")
    sample = check.sample()
    assert sample.metrics["count"] == 1.0 and sample.metrics["pid"] == float(proc.pid)
    assert table.scans == 1
    proc.kill()
    proc.wait(timeout=5)
    clock.now += 11
    sample = check.sample()
    assert sample.metrics["count"] == 0.0 and "stale pidfile" in sample.summary
    pidfile.write_text("not a pid")
    with pytest.raises(CheckError, match="does not hold a pid"):
        check.sample()


def test_zombies_are_counted_apart(spawn: Spawn, sleeper_name: str) -> None:
    proc = spawn(sleeper_name, "60")
    os.kill(proc.pid, signal.SIGKILL)  # Not reaped: it stays a zombie until proc.wait().
    table = ProcessTable(max_age=0.0)
    check = build_check("process", {"name": Path(sleeper_name).name}, processes=table)
    wait_until(lambda: check.sample().metrics["zombies"] == 1.0)
    sample = check.sample()
    assert sample.metrics["count"] == 0.0 and "zombie" in sample.summary
    assert isinstance(check, ProcessCheck) and check.watched_pids() == set()


def test_one_scan_serves_every_check_of_a_tick(spawn: Spawn, sleeper_name: str) -> None:
    spawn(sleeper_name, "60")
    clock = Clock()
    table = ProcessTable(clock_monotonic=clock, max_age=0.5)
    name = Path(sleeper_name).name
    checks = [build_check("process", {"name": name}, processes=table) for _ in range(5)]
    checks.append(build_check("process", {"cmdline": f"{name} 60$"}, processes=table))
    assert all(float(c.sample().metrics["count"]) >= 1.0 for c in checks)
    assert table.scans == 1
    clock.now += 0.4
    checks[0].sample()
    assert table.scans == 1
    clock.now += 0.2
    checks[0].sample()
    assert table.scans == 2
    table.invalidate()
    checks[0].sample()
    assert table.scans == 3


def test_cpu_percent_is_measured_between_scans(spawn: Spawn) -> None:
    tag = f"stanch-busy-{uuid.uuid4().hex}"
    busy = spawn(*python("while True: pass", tag))
    table = ProcessTable(max_age=0.0)
    table.snapshot()
    time.sleep(0.3)
    (info,) = [p for p in table.snapshot() if p.pid == busy.pid]
    assert info.cpu_percent > 5.0  # Not 0.0 as a first call gives; low under CI contention.
    assert info.cmdline[-1] == tag and info.create_time > 0


def test_dead_processes_are_dropped_between_scans(spawn: Spawn, sleeper_name: str) -> None:
    table = ProcessTable(max_age=0.0)
    procs = [spawn(sleeper_name, "60") for _ in range(5)]
    during = table.snapshot()
    assert {q.pid for q in procs} <= {p.pid for p in during}
    assert table.tracked == len(during)
    for proc in procs:
        proc.kill()
        proc.wait(timeout=5)
    after = table.snapshot()  # max_age=0: every call is a fresh scan.
    assert not {p.pid for p in after} & {q.pid for q in procs}
    assert table.tracked == len(after)
