"""Login throttling: token buckets per client address and for the whole console.

A console login is the one request a stranger can make with a guess in it. API tokens carry 256
random bits, so guessing one is hopeless anyway; the limit is there so that a script cannot turn
the form into a free oracle or a way to fill the log. It reuses the enrollment limiter
(:class:`controlplane.ratelimit.EnrollLimiter`): every attempt, right or wrong, takes a token
from its client address's bucket and from the global one before anything is checked; an empty
bucket answers 429 with ``Retry-After``. Time is the injected clock's.

The global bucket means a flood from many addresses can keep legitimate operators out for a
while too: that is the trade. ``opsctl`` (gRPC) is not behind this form and keeps working.

Failed and refused attempts are counted (:attr:`LoginThrottle.failed`, :attr:`refused`) and
failed ones are logged with the client address, never with the token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane.ratelimit import EnrollLimiter, EnrollLimits, Rate

LOGIN_LIMITS = EnrollLimits(
    per_peer=Rate(per_second=1 / 6, burst=10),
    overall=Rate(per_second=1.0, burst=60),
    max_peers=10_000,
)
"""Per address: 10 attempts at once, then one every 6 s. Console-wide: 60 at once, then one a
second (a whole on-call team logging in together after an incident fits in the burst)."""


@dataclass
class LoginThrottle:
    now: Callable[[], float]
    limits: EnrollLimits = LOGIN_LIMITS
    failed: int = 0
    """Logins refused because the token was unknown, wrong, expired or revoked."""
    refused: int = 0
    """Login attempts answered 429 before any check."""
    _limiter: EnrollLimiter = field(init=False)

    def __post_init__(self) -> None:
        self._limiter = EnrollLimiter(self.now, self.limits)

    def allow(self, address: str) -> bool:
        """Take one attempt for ``address``; False (and counted) when a bucket is empty."""
        if self._limiter.allow(address):
            return True
        self.refused += 1
        return False

    def retry_after(self) -> int:
        """Whole seconds after which either bucket has refilled at least one attempt."""
        slowest = min(self.limits.per_peer.per_second, self.limits.overall.per_second)
        return max(1, math.ceil(1.0 / slowest))
