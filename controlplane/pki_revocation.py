"""Which operator certificates are refused: revoked serials and revoked operator names.

Operator certificates are issued offline, so TLS alone accepts one until it expires (grpcio
offers no CRL hook on the server). The auth interceptor therefore asks :class:`OperatorRevocations`
on every certificate-authenticated call. Asking storage each time would put a query on every
RPC; the set is instead cached for ``ttl`` seconds (monotonic clock) and dropped at once when
this replica writes a revocation. Another replica (PostgreSQL) picks a revocation up within
``ttl``. A failing refresh raises: the caller refuses the call (fail closed).

A revoked *name* refuses the certificates of that operator issued up to the revocation, so a
certificate issued afterwards (``opsctl pki issue-operator`` again) works. The issue time is
the certificate's ``notBefore`` plus the backdating ``Authority.sign`` applies.
"""

from __future__ import annotations

import asyncio
import datetime

from cryptography import x509

from agent.clock import Clock
from controlplane.pki import SKEW, serial_hex
from controlplane.storage.base_pki import RevokedOperators
from controlplane.storage.runner import StorageThread

REFRESH = 5.0
"""Seconds a replica may go on accepting an operator certificate revoked by another replica."""


def issued_at(cert: x509.Certificate) -> float:
    """When ``cert`` was signed: ``Authority.sign`` backdates ``notBefore`` by
    ``min(SKEW, lifetime / 10)``, i.e. by ``min(SKEW, span / 11)`` of the span it wrote."""
    start = cert.not_valid_before_utc.timestamp()
    span = cert.not_valid_after_utc.timestamp() - start
    return start + min(SKEW / datetime.timedelta(seconds=1), span / 11)


class OperatorRevocations:
    def __init__(self, store: StorageThread, clock: Clock, ttl: float = REFRESH) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self._known = RevokedOperators()
        self._until = float("-inf")
        self._generation = 0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget the cached set (this replica just wrote a revocation)."""
        self._until = float("-inf")
        self._generation += 1  # a refresh already under way must not re-arm the old set

    async def current(self) -> RevokedOperators:
        if self.clock.monotonic() < self._until:
            return self._known
        async with self._lock:  # one query for every call that found the cache stale
            if self.clock.monotonic() >= self._until:
                started, generation = self.clock.monotonic(), self._generation
                self._known = await self.store.run(self.store.storage.revoked_operators)
                if generation == self._generation:
                    self._until = started + self.ttl
        return self._known

    async def refuses(self, name: str, cert: x509.Certificate) -> str | None:
        """Why operator ``name``'s ``cert`` is refused, or None when it is not revoked."""
        known = await self.current()
        serial = serial_hex(cert)
        if serial in known.serials:
            return f"certificate {serial} is revoked"
        cut = known.names.get(name)
        if cut is not None and issued_at(cert) <= cut:
            return f"operator {name!r} is revoked (certificates issued until {cut:.0f})"
        return None
