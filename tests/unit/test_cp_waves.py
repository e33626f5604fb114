"""Wave plans: parsing, cumulative targets, and deterministic, stable membership."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.errors import InvalidRequest
from controlplane.waves import assign_waves, parse_waves, targets

HOSTS = [f"host-{i:03d}" for i in range(200)]


def test_the_default_shape() -> None:
    specs = parse_waves(["1,5%,25%,100%"])
    assert [s.text for s in specs] == ["1", "5%", "25%", "100%"]
    assert targets(specs, 200) == [1, 10, 50, 200]
    assert targets(specs, 3) == [1, 1, 1, 3]  # tiny fleets: percent rounds up, never below 1
    assert targets(specs, 0) == [0, 0, 0, 0]


def test_waves_never_shrink_and_counts_are_capped() -> None:
    assert targets(parse_waves(["10", "5%", "100%"]), 100) == [10, 10, 100]
    assert targets(parse_waves(["500", "100%"]), 20) == [20, 20]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "at least one wave"),
        ("1,5%", "must be 100%"),
        ("0,100%", "whole number"),
        ("1.5,100%", "whole number"),
        ("1,150%,100%", "at most 100%"),
        ("1,x,100%", "neither"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        parse_waves([text])


def test_membership_is_cumulative_and_deterministic() -> None:
    specs = parse_waves(["1,5%,25%,100%"])
    waves = assign_waves("r1", specs, HOSTS)
    assert assign_waves("r1", specs, list(reversed(HOSTS))) == waves  # order-free
    counts = [sum(1 for w in waves.values() if w <= k) for k in range(4)]
    assert counts == [1, 10, 50, 200]


def test_different_rollouts_pick_different_canaries() -> None:
    specs = parse_waves(["1,100%"])
    canaries = {
        next(h for h, w in assign_waves(f"r{i}", specs, HOSTS).items() if w == 0) for i in range(20)
    }
    assert len(canaries) > 10  # no host is always the guinea pig


def test_a_joining_host_moves_at_most_one_other_across_a_boundary() -> None:
    specs = parse_waves(["1,10%,100%"])
    before = assign_waves("r1", specs, HOSTS[:100])
    after = assign_waves("r1", specs, HOSTS[:101])
    moved = [h for h in before if before[h] != after[h]]
    assert len(moved) <= 2


@given(st.lists(st.integers(1, 100), min_size=1, max_size=5), st.integers(0, 300))
def test_targets_are_monotonic_and_end_at_everyone(percents: list[int], hosts: int) -> None:
    texts = [f"{p}%" for p in percents] + ["100%"]
    counts = targets(parse_waves(texts), hosts)
    assert counts == sorted(counts)
    assert counts[-1] == hosts
