"""CPU percent from per-check baselines of the kernel's cumulative CPU times."""

from __future__ import annotations

from typing import NamedTuple

from agent.checks.resources import CpuCheck


class Times(NamedTuple):
    user: float
    nice: float
    system: float
    idle: float
    iowait: float
    guest: float


class Counter:
    """Cumulative CPU times that move only when the test says so."""

    def __init__(self) -> None:
        self.now = Times(100.0, 0.0, 50.0, 800.0, 50.0, 0.0)

    def __call__(self) -> Times:
        return self.now

    def add(self, busy: float, idle: float, guest: float = 0.0) -> None:
        n = self.now
        # Guest time is also counted in user time by the kernel.
        self.now = n._replace(user=n.user + busy, idle=n.idle + idle, guest=n.guest + guest)


def test_percent_is_busy_share_since_the_previous_sample() -> None:
    counter = Counter()
    check = CpuCheck(times=counter)
    counter.add(busy=30.0, idle=70.0)
    assert check.sample().metrics["percent"] == 30.0
    counter.add(busy=90.0, idle=10.0, guest=50.0)
    assert check.sample().metrics["percent"] == 90.0


def test_two_checks_keep_separate_baselines() -> None:
    counter = Counter()
    a, b = CpuCheck(times=counter), CpuCheck(times=counter)
    counter.add(busy=50.0, idle=50.0)
    assert a.sample().metrics["percent"] == 50.0
    counter.add(busy=0.0, idle=100.0)
    assert a.sample().metrics["percent"] == 0.0
    assert b.sample().metrics["percent"] == 25.0


def test_counters_that_did_not_move_keep_the_last_value() -> None:
    counter = Counter()
    check = CpuCheck(times=counter)
    assert check.sample().metrics["percent"] == 0.0
    counter.add(busy=10.0, idle=30.0)
    assert check.sample().metrics["percent"] == 25.0
    assert check.sample().metrics["percent"] == 25.0
