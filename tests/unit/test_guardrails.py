"""Maintenance windows (weekly, crossing midnight, absolute), storm guard, budgets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.engine.guardrails import StormGuard, active_window, budget_until, window_end
from agent.policy.model import Window

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


def at(day: int, hh: int, mm: int = 0, ss: float = 0.0) -> float:
    """Wall time on the given weekday of the week of Monday 2026-11-23, UTC."""
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    assert monday.weekday() == MON
    return (monday + timedelta(days=day, hours=hh, minutes=mm, seconds=ss)).timestamp()


def weekly(start: str, end: str, days: set[int] | None = None, name: str = "") -> Window:
    def minute(text: str) -> int:
        h, m = text.split(":")
        return int(h) * 60 + int(m)

    chosen = frozenset(days) if days is not None else frozenset(range(7))
    return Window(days=chosen, start_minute=minute(start), end_minute=minute(end), name=name)


# ---- weekly windows --------------------------------------------------------------------------


def test_same_day_window_is_half_open() -> None:
    w = weekly("02:00", "04:00")
    assert active_window([w], at(TUE, 1, 59, 59)) is None
    assert active_window([w], at(TUE, 2, 0)) is w
    assert active_window([w], at(TUE, 3, 59, 59.9)) is w
    assert active_window([w], at(TUE, 4, 0)) is None


def test_day_set_limits_a_window() -> None:
    w = weekly("02:00", "04:00", {SAT, SUN})
    assert active_window([w], at(SAT, 3)) is w
    assert active_window([w], at(SUN, 3)) is w
    for day in (MON, TUE, WED, THU, FRI):
        assert active_window([w], at(day, 3)) is None


def test_window_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    w = weekly("22:00", "02:00", {FRI})
    assert active_window([w], at(FRI, 21, 59)) is None
    assert active_window([w], at(FRI, 22, 0)) is w
    assert active_window([w], at(FRI, 23, 59)) is w
    assert active_window([w], at(SAT, 0, 0)) is w  # Friday's window, after midnight
    assert active_window([w], at(SAT, 1, 59)) is w
    assert active_window([w], at(SAT, 2, 0)) is None
    assert active_window([w], at(SAT, 22, 30)) is None  # Saturday is not in the set
    assert active_window([w], at(FRI, 1, 0)) is None  # Thursday night is not in the set either


def test_midnight_crossing_from_sunday_wraps_to_monday() -> None:
    w = weekly("23:00", "01:00", {SUN})
    assert active_window([w], at(SUN, 23, 30)) is w
    assert active_window([w], at(MON, 0, 30)) is w
    assert active_window([w], at(MON, 23, 30)) is None


def test_every_day_window_crossing_midnight() -> None:
    w = weekly("22:00", "06:00")
    for day in range(7):
        assert active_window([w], at(day, 23)) is w
        assert active_window([w], at(day, 5, 59)) is w
        assert active_window([w], at(day, 12)) is None


def test_empty_window_never_matches() -> None:
    w = weekly("03:00", "03:00")
    assert all(active_window([w], at(TUE, h)) is None for h in range(24))


def test_first_matching_window_wins_and_incomplete_windows_are_skipped() -> None:
    incomplete = Window(name="broken")
    a = weekly("01:00", "05:00", name="a")
    b = weekly("02:00", "03:00", name="b")
    assert active_window([incomplete, a, b], at(WED, 2, 30)) is a
    assert active_window([incomplete], at(WED, 2, 30)) is None
    assert active_window([], at(WED, 2, 30)) is None


# ---- absolute windows ------------------------------------------------------------------------


def test_absolute_window() -> None:
    w = Window(start_at=at(TUE, 2), end_at=at(TUE, 6), name="migration")
    assert active_window([w], at(TUE, 1, 59, 59)) is None
    assert active_window([w], at(TUE, 2)) is w
    assert active_window([w], at(TUE, 5, 59, 59)) is w
    assert active_window([w], at(TUE, 6)) is None
    assert active_window([w], at(TUE, 2) + 7 * 86400) is None  # not weekly
    assert window_end(w, at(TUE, 3)) == at(TUE, 6)


# ---- window_end ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "now", "end"),
    [
        (weekly("02:00", "04:00"), at(TUE, 2, 0), at(TUE, 4)),
        (weekly("02:00", "04:00"), at(TUE, 3, 59, 42.5), at(TUE, 4)),
        (weekly("22:00", "02:00", {FRI}), at(FRI, 22, 15, 7), at(SAT, 2)),
        (weekly("22:00", "02:00", {FRI}), at(SAT, 1, 30), at(SAT, 2)),
        (weekly("23:00", "00:00"), at(WED, 23, 30), at(THU, 0)),
    ],
)
def test_window_end(window: Window, now: float, end: float) -> None:
    assert active_window([window], now) is window
    assert window_end(window, now) == pytest.approx(end)


@given(
    start=st.integers(0, 1439),
    length=st.integers(1, 1439),
    offset=st.integers(0, 86400 * 1000),
    day=st.integers(0, 6),
)
def test_window_end_is_in_the_future_and_outside_the_window(
    start: int, length: int, offset: int, day: int
) -> None:
    end_minute = (start + length) % 1440
    w = Window(start_minute=start, end_minute=end_minute)
    now = at(day, 0) + start * 60 + (offset % (length * 60_000)) / 1000
    assert active_window([w], now) is w
    end = window_end(w, now)
    assert now < end <= now + length * 60 + 1e-6
    assert active_window([w], end) is None
    assert active_window([w], end - 1) is w


# ---- storm guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("firing", "total", "tripped"),
    [
        (0, 0, False),
        (0, 10, False),
        (2, 2, False),  # 100 % but below min_firing: two local problems
        (3, 3, True),
        (3, 6, False),  # exactly 50 % is not more than 50 %
        (4, 7, True),
        (5, 10, False),
        (6, 10, True),
        (3, 100, False),
    ],
)
def test_storm_guard_defaults(firing: int, total: int, tripped: bool) -> None:
    assert StormGuard().tripped(firing, total) is tripped


def test_storm_guard_custom_thresholds() -> None:
    guard = StormGuard(percent=20.0, min_firing=1)
    assert guard.tripped(1, 4)
    assert not guard.tripped(1, 5)
    assert not guard.tripped(1, 0)


# ---- budgets ---------------------------------------------------------------------------------


def test_budget_not_spent() -> None:
    assert budget_until([], 3, 3600.0, 10_000.0) is None
    assert budget_until([9_000.0, 9_500.0], 3, 3600.0, 10_000.0) is None


def test_budget_spent_until_the_oldest_counted_attempt_ages_out() -> None:
    attempts = [7_000.0, 9_000.0, 9_500.0]
    assert budget_until(attempts, 3, 3600.0, 10_000.0) == 7_000.0 + 3600.0
    assert budget_until(attempts, 3, 3600.0, 10_599.0) == 10_600.0
    assert budget_until(attempts, 3, 3600.0, 10_600.0) is None


def test_budget_ignores_attempts_outside_the_window_and_order() -> None:
    attempts = [9_500.0, 1_000.0, 9_000.0, 2_000.0, 8_000.0, 9_900.0]
    # Four recent ones, max 3: the next run waits until all but two have aged out.
    assert budget_until(attempts, 3, 3600.0, 10_000.0) == 9_000.0 + 3600.0


@given(
    attempts_ms=st.lists(st.integers(0, 10_000_000), max_size=20),
    max_runs=st.integers(1, 6),
    window_ms=st.integers(1000, 5_000_000),
    now_ms=st.integers(0, 10_000_000),
)
def test_budget_until_is_the_first_moment_with_room(
    attempts_ms: list[int], max_runs: int, window_ms: int, now_ms: int
) -> None:
    attempts = [a / 1000 for a in attempts_ms]
    window, now = window_ms / 1000, now_ms / 1000

    def count(t: float) -> int:
        return sum(1 for a in attempts if t - window < a <= t)

    until = budget_until([a for a in attempts if a <= now], max_runs, window, now)
    if until is None:
        assert count(now) < max_runs
    else:
        assert count(now) >= max_runs
        assert until > now
        # Room at `until` (up to float rounding of until - window), none just before it.
        started = [a for a in attempts if a <= now]
        assert sum(1 for a in started if until + 1e-6 - window < a) < max_runs
        assert sum(1 for a in started if until - 1e-3 - window < a) >= max_runs
