"""The fleet storm breaker: a share of the fleet firing one policy within a window trips it."""

from __future__ import annotations

from controlplane.storm import StormBreaker, StormSettings

T0 = 1_800_000_000.0


def breaker() -> StormBreaker:
    return StormBreaker(StormSettings(fraction=0.2, window=300, min_hosts=3, pause_for=3600))


def test_trips_above_the_fraction_and_minimum() -> None:
    b = breaker()
    for i in range(2):
        b.fired(f"h{i}", "disk", T0)
    assert b.check(fleet=10, now=T0) == []  # 2 of 10: at the 20% line, not above
    b.fired("h2", "disk", T0 + 1)
    (trip,) = b.check(fleet=10, now=T0 + 1)
    assert (trip.policy, trip.hosts, trip.fleet) == ("disk", 3, 10)
    assert "opsctl resume --policy disk" in trip.message
    assert b.check(fleet=10, now=T0 + 2) == []  # tripped once; it starts counting again


def test_a_small_fleet_needs_the_minimum_number_of_hosts() -> None:
    b = breaker()
    b.fired("h0", "disk", T0)
    b.fired("h1", "disk", T0)
    assert b.check(fleet=2, now=T0) == []  # 100% of 2 hosts, but fewer than 3


def test_old_fires_leave_the_window_and_repeats_count_once() -> None:
    b = breaker()
    for _ in range(5):
        b.fired("h0", "disk", T0)
    b.fired("h1", "disk", T0)
    b.fired("h2", "disk", T0 - 400)  # outside the window
    assert b.firing_hosts("disk", T0) == 2
    assert b.check(fleet=5, now=T0) == []


def test_paused_policies_do_not_trip_again() -> None:
    b = breaker()
    for i in range(5):
        b.fired(f"h{i}", "disk", T0)
    assert b.check(fleet=5, now=T0, paused={"disk"}) == []
    assert [t.policy for t in b.check(fleet=5, now=T0)] == ["disk"]


def test_memory_is_bounded_by_the_window() -> None:
    b = breaker()
    for i in range(1000):
        b.fired(f"h{i}", f"p{i}", T0)
    b.check(fleet=10_000, now=T0 + 301)
    assert all(b.firing_hosts(f"p{i}", T0) == 0 for i in range(1000))  # forgotten
