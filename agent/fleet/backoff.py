"""Reconnect delays: exponential, capped, jittered.

Jitter is what keeps a control-plane restart from becoming a thundering herd: 10,000 agents that
lost their streams at the same instant must not all dial back at the same instant. Each delay is
drawn from the upper half of the exponential window ("equal jitter"): spread out, but never so
short that a host hammers a control plane that is down.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next attempt (and count this one)."""
        window: float = min(self.maximum, self.initial * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return window / 2 + self.rng.uniform(0, window / 2)

    def reset(self) -> None:
        """After a connection that worked: the next failure starts from ``initial`` again."""
        self.attempt = 0
