"""PidWatcher against real processes, in both of its modes (pidfd where the kernel has it)."""

from __future__ import annotations

import os
import queue
import subprocess
import time
from collections.abc import Iterator

import pytest

from agent.checks.base import WatchesPids
from agent.checks.proctable import ProcessTable
from agent.checks.testing import build_check
from agent.pidwatch import PidWatcher, pidfd_supported

MODES = ["pidfd", "poll"]
Procs = list[subprocess.Popen[bytes]]


class Exits:
    """Collects on_exit calls with the time they arrived."""

    def __init__(self) -> None:
        self.q: queue.Queue[tuple[int, float]] = queue.Queue()

    def __call__(self, pid: int) -> None:
        self.q.put((pid, time.monotonic()))

    def next(self, timeout: float = 2.0) -> tuple[int, float]:
        return self.q.get(timeout=timeout)

    def none_within(self, seconds: float) -> bool:
        try:
            self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


@pytest.fixture(params=MODES)
def watcher(request: pytest.FixtureRequest) -> Iterator[tuple[PidWatcher, Exits]]:
    if request.param == "pidfd" and not pidfd_supported():
        pytest.skip("os.pidfd_open is not available (needs Linux 5.3+ and Python 3.9+)")
    exits = Exits()
    w = PidWatcher(exits, use_pidfd=request.param == "pidfd")
    assert w.mode == request.param
    yield w, exits
    w.close()


@pytest.fixture
def sleeps() -> Iterator[Procs]:
    procs: Procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


def sleep60(procs: Procs) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "60"])
    procs.append(proc)
    return proc


def budget(w: PidWatcher) -> float:
    """How soon an exit must be reported: milliseconds with pidfds, one poll period otherwise."""
    return 0.1 if w.mode == "pidfd" else w.poll_interval + 0.15


def test_default_mode_on_this_kernel() -> None:
    with PidWatcher(lambda pid: None) as w:
        assert w.mode == ("pidfd" if pidfd_supported() else "poll")


def test_kill_is_reported_promptly(watcher: tuple[PidWatcher, Exits], sleeps: Procs) -> None:
    w, exits = watcher
    proc = sleep60(sleeps)
    w.watch(proc.pid)
    assert exits.none_within(0.05)
    killed = time.monotonic()
    proc.kill()  # Not reaped yet: the exit must be seen while the process is a zombie.
    pid, at = exits.next()
    assert pid == proc.pid
    assert at - killed < budget(w)
    assert w.watched() == set()


def test_already_gone_pid_is_reported(watcher: tuple[PidWatcher, Exits]) -> None:
    w, exits = watcher
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=5)
    started = time.monotonic()
    w.watch(proc.pid)
    pid, at = exits.next()
    assert pid == proc.pid and at - started < budget(w)


def test_zombie_at_watch_time_is_reported(watcher: tuple[PidWatcher, Exits], sleeps: Procs) -> None:
    w, exits = watcher
    proc = sleep60(sleeps)
    proc.kill()
    deadline = time.monotonic() + 5
    while _state(proc.pid) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    w.watch(proc.pid)
    assert exits.next()[0] == proc.pid


def test_unwatched_pid_is_not_reported(watcher: tuple[PidWatcher, Exits], sleeps: Procs) -> None:
    w, exits = watcher
    proc = sleep60(sleeps)
    w.watch(proc.pid)
    w.unwatch(proc.pid)
    proc.kill()
    assert exits.none_within(0.3)


def test_each_of_many_pids_is_reported_once(
    watcher: tuple[PidWatcher, Exits], sleeps: Procs
) -> None:
    w, exits = watcher
    procs = [sleep60(sleeps) for _ in range(5)]
    for proc in procs:
        w.watch(proc.pid)
        w.watch(proc.pid)  # Watching twice is one watch.
    assert w.watched() == {p.pid for p in procs}
    for proc in procs:
        proc.kill()
        assert exits.next()[0] == proc.pid
    assert exits.none_within(0.3)
    # A pid can be followed again after its exit was reported (here: already gone).
    w.watch(procs[0].pid)
    assert exits.next()[0] == procs[0].pid


def test_a_failing_callback_does_not_stop_the_watcher(sleeps: Procs) -> None:
    seen: queue.Queue[int] = queue.Queue()

    def on_exit(pid: int) -> None:
        seen.put(pid)
        raise RuntimeError("callback bug")

    with PidWatcher(on_exit) as w:
        for _ in range(2):
            proc = sleep60(sleeps)
            w.watch(proc.pid)
            proc.kill()
            assert seen.get(timeout=2) == proc.pid


def test_close_releases_descriptors_and_refuses_new_watches(sleeps: Procs) -> None:
    before = len(os.listdir("/proc/self/fd"))
    w = PidWatcher(lambda pid: None)
    for _ in range(3):
        w.watch(sleep60(sleeps).pid)
    w.close()
    w.close()
    assert len(os.listdir("/proc/self/fd")) == before
    w.unwatch(1)  # Harmless after close.
    with pytest.raises(RuntimeError, match="closed"):
        w.watch(sleeps[0].pid)


def test_rejects_non_pids() -> None:
    with PidWatcher(lambda pid: None) as w, pytest.raises(ValueError):
        w.watch(0)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_process_check_pids_feed_the_watcher(sleeps: Procs) -> None:
    """The wiring the runner does: sample, watch what the check saw, re-check on exit."""
    proc = sleep60(sleeps)
    check = build_check("process", {"cmdline": "^sleep 60$"}, processes=ProcessTable(max_age=0.0))
    check.sample()
    assert isinstance(check, WatchesPids) and proc.pid in check.watched_pids()
    exits = Exits()
    with PidWatcher(exits) as w:
        for pid in check.watched_pids():
            w.watch(pid)
        proc.kill()
        # Other tests' "sleep 60" may match and exit too; wait for ours (bounded by next()).
        while exits.next()[0] != proc.pid:
            pass
        proc.wait(timeout=5)
        check.sample()
        assert proc.pid not in check.watched_pids()
