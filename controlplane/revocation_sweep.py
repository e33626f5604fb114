"""Revocations made through any replica cut the streams on this one.

``opsctl agents revoke HOST`` and ``opsctl pki revoke-cert SERIAL`` close the live stream at once
on the replica that served the call (``pki_service``). With several replicas on one PostgreSQL,
the host may be streaming to another; that replica learns of the revocation here, from storage:
every replica runs :class:`RevocationSweep` from its delivery pass
(``rollout_lease.Delivery``, every tick, driver or not), at most once every :data:`EVERY`
seconds, the same delay within which ``pki_revocation`` refuses a revoked operator certificate
on every replica.

Each sweep reads the revoked hosts (a small table: what operators revoked by hand) and the host
certificates revoked since the previous sweep (``revoked_certificates_since``, a partial index:
the recent revocations, not the whole table), and closes this replica's streams of revoked hosts
and streams opened with a revoked certificate serial. Each cut is logged with the host and why.
The agent's reconnect is then refused by ``identity.admit``, which checks both.

The window starts :data:`LOOKBACK` seconds before the previous successful sweep began, not at the
newest revocation seen: a revocation's time is the serving replica's wall clock, taken before
its transaction commits, so one may become visible with a time earlier than one already read (a
slow commit, clocks a little apart). Reading a revocation twice is harmless: its stream is gone,
and a reconnect with it is refused. A failed sweep keeps its window for the next one.

A stream whose certificate serial is unknown (``--insecure``) is cut here only when its host is
revoked; revoking one serial cuts such a stream only on the replica that served the call
(``Connections.cut_certificate``), as it cannot know which certificate the stream used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

from agent.clock import Clock
from controlplane.connections import Connection, Connections
from controlplane.pki_revocation import REFRESH
from controlplane.storage.base_pki import CertificateRecord, RevokedHost
from controlplane.storage.runner import StorageThread

log = logging.getLogger("stanch.cp.pki")
EVERY = REFRESH
"""Seconds between sweeps: how long a stream may outlive a revocation made on another replica."""
LOOKBACK = 30.0
"""Seconds each window reaches back before the previous sweep (late commits, clock skew)."""


@dataclass(frozen=True)
class Cut:
    host_id: str
    peer: str
    reason: str


def to_cut(
    streams: Iterable[Connection],
    hosts: Iterable[RevokedHost],
    certificates: Iterable[CertificateRecord],
) -> list[tuple[Connection, str]]:
    """The open streams to close, each with why: its host is revoked, or the certificate it was
    opened with is. Pure: the caller closes them."""
    by_host = {h.host_id: h for h in hosts}
    by_serial = {c.serial: c for c in certificates}
    out: list[tuple[Connection, str]] = []
    for conn in streams:
        if conn.closed:
            continue
        host = by_host.get(conn.host_id)
        cert = by_serial.get(conn.serial) if conn.serial else None
        if host is not None:
            why = f"host revoked by {host.revoked_by or '?'} at {host.at:.0f}"
            out.append((conn, f"{why} ({host.reason})" if host.reason else why))
        elif cert is not None:
            why = f"certificate {cert.serial} revoked at {cert.revoked_at:.0f}"
            out.append((conn, f"{why} ({cert.reason})" if cert.reason else why))
    return out


class RevocationSweep:
    """Closes this replica's streams that a revocation on any replica has cut off; see the
    module docstring. ``sweep`` is called every tick and does its work every ``every``
    seconds (monotonic clock)."""

    def __init__(
        self,
        store: StorageThread,
        connections: Connections,
        clock: Clock,
        every: float = EVERY,
        lookback: float = LOOKBACK,
    ) -> None:
        self.store = store
        self.db = store.storage
        self.connections = connections
        self.clock = clock
        self.every = every
        self.lookback = lookback
        self._next = -math.inf
        self._since: float | None = None
        """Where the next window starts (wall clock); None before the first sweep."""

    async def sweep(self) -> list[Cut]:
        """Close the revoked streams when a sweep is due; the streams closed. Raises when
        storage fails (the window is kept: the next call retries it)."""
        if self.clock.monotonic() < self._next:
            return []
        self._next = self.clock.monotonic() + self.every
        started = self.clock.now()
        since = self._since if self._since is not None else started - self.lookback
        if not len(self.connections):  # nothing to cut; a stream opened later passed admit
            self._since = started - self.lookback
            return []
        hosts = await self.store.run(self.db.revoked_hosts)
        certificates = await self.store.run(self.db.revoked_certificates_since, since)
        self._since = started - self.lookback
        cuts: list[Cut] = []
        for conn, reason in to_cut(self.connections.all(), hosts, certificates):
            conn.close()  # the writer stops; the agent's reconnect is refused by admit
            cuts.append(Cut(conn.host_id, conn.peer, reason))
            log.warning(
                "revocation sweep: stream of host %s (%s) cut: %s",
                conn.host_id,
                conn.peer or "peer unknown",
                reason,
            )
        return cuts
