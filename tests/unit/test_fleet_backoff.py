"""Reconnect delays grow, cap, spread, and start over after a good connection."""

from __future__ import annotations

import random

from agent.fleet.backoff import Backoff


def test_exponential_capped_and_jittered_within_the_upper_half() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(4))
    delays = [backoff.next() for _ in range(12)]
    for attempt, delay in enumerate(delays):
        window = min(60.0, 2.0**attempt)
        assert window / 2 <= delay <= window
    assert max(delays) <= 60.0 and delays[-1] >= 30.0


def test_jitter_spreads_a_herd() -> None:
    firsts = {round(Backoff(8.0, 60.0, random.Random(seed)).next(), 3) for seed in range(200)}
    assert len(firsts) > 150 and min(firsts) >= 4.0 and max(firsts) <= 8.0


def test_reset_starts_over() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(1))
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.next() <= 1.0


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(0.5, 10.0)
    backoff.attempt = 10_000
    assert 5.0 <= backoff.next() <= 10.0
