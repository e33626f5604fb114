"""Token buckets for enrollment attempts: one per peer address and one for the whole server.

Enrollment is the one call a stranger may make, so it is the one a stranger can abuse: guessing
tokens, or burning CPU on CSR checks and signatures. Each attempt takes a token from its peer's
bucket and from the global bucket; an empty bucket refuses the attempt before any work. Time
comes from the injected clock (``now()``), so tests drive it without sleeping. The per-peer
table is bounded: past ``max_peers`` the fullest (idle) buckets are dropped, which only ever
forgives a peer, never punishes one twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: float


@dataclass
class TokenBucket:
    rate: Rate
    tokens: float
    updated: float

    def level(self, now: float) -> float:
        elapsed = max(0.0, now - self.updated)
        return min(self.rate.burst, self.tokens + elapsed * self.rate.per_second)

    def take(self, now: float) -> bool:
        self.tokens = self.level(now)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class EnrollLimits:
    per_peer: Rate = Rate(per_second=1 / 6, burst=10)
    """10 attempts at once, then one every 6 s, per source address."""
    overall: Rate = Rate(per_second=50.0, burst=200)
    """What the server signs per second at most, however many addresses ask."""
    max_peers: int = 10_000


class EnrollLimiter:
    def __init__(self, now: Callable[[], float], limits: EnrollLimits | None = None) -> None:
        self.limits = limits or EnrollLimits()
        self._now = now
        self._overall = TokenBucket(self.limits.overall, self.limits.overall.burst, now())
        self._peers: dict[str, TokenBucket] = {}

    def allow(self, peer: str) -> bool:
        """Take one attempt for ``peer`` (an address without its port); False when either its
        own bucket or the global one is empty."""
        now = self._now()
        bucket = self._peers.get(peer)
        if bucket is None:
            if len(self._peers) >= self.limits.max_peers:
                self._forget_idle(now)
            bucket = TokenBucket(self.limits.per_peer, self.limits.per_peer.burst, now)
            self._peers[peer] = bucket
        if not bucket.take(now):
            return False
        return self._overall.take(now)

    def _forget_idle(self, now: float) -> None:
        full = [p for p, b in self._peers.items() if b.level(now) >= b.rate.burst]
        for peer in full or list(self._peers)[: len(self._peers) // 2]:
            del self._peers[peer]


def peer_address(peer: str) -> str:
    """``ipv4:10.0.0.1:5123`` -> ``10.0.0.1``; ``ipv6:[::1]:5123`` -> ``::1``."""
    _, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if rest.count(":") else rest
    return host.strip("[]") or peer
