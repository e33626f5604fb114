"""Which replica drives rollouts, and how the others still deliver what it issues.

Among control-plane replicas sharing one database, one at a time drives rollouts: the holder of
the ``rollout-driver`` lease (:class:`DriverLease`). The engine renews it before every step, so a
replica that stalled past the TTL and lost it stops before its next write; a clean stop gives it
up at once (a negative TTL) so another replica takes over at its next tick instead of after the
TTL. A replica that takes the lease over from another (it was refused before) records that on the
audit log as the control plane's own action.

An assignment is sent first by the replica that issued it, to its own streams only. Every replica
runs :class:`Delivery` each tick: assignments issued anywhere (the driver's steps, an operator's
abort on any replica) reach the hosts streaming to it within a tick, each once per stream. The
same pass sends the approval decisions an operator made through another replica
(``controlplane.approvals``) to the hosts streaming here, each exactly once across replicas,
and, every few seconds, cuts the streams here of hosts and certificates revoked through any
replica (``controlplane.revocation_sweep``).
"""

from __future__ import annotations

import logging
import math

from agent.clock import Clock, SystemClock
from controlplane.audit import AuditLog
from controlplane.audit_system import record_automatic
from controlplane.connections import Connections
from controlplane.revocation_sweep import RevocationSweep
from controlplane.storage.base_decisions import DecisionRecord
from controlplane.storage.runner import StorageThread
from stanch.v1 import fleet_pb2

log = logging.getLogger("stanch.cp.rollouts")
LEASE = "rollout-driver"
PURGE_EVERY = 60.0
"""Seconds between deletions of expired queued decisions (an expired one is never sent anyway)."""


def decision_message(envelope: bytes) -> fleet_pb2.ControlMessage:
    """A signed approval decision as it goes on an agent's stream."""
    return fleet_pb2.ControlMessage(
        approval_decision=fleet_pb2.SignedApprovalDecision(envelope=envelope)
    )


class DriverLease:
    """Takes, renews and releases the driver lease; logs when this replica starts or stops
    driving."""

    def __init__(
        self,
        store: StorageThread,
        clock: Clock,
        holder: str,
        tick: float,
        audit: AuditLog,
        source: str,
    ) -> None:
        self.store = store
        self.db = store.storage
        self.clock = clock
        self.holder = holder
        self.ttl = max(3 * tick, 5.0)
        self.audit = audit
        self.source = source
        self.driving = False
        """Whether this replica held the lease at its last attempt."""
        self._refused = False
        """This replica's last attempt was refused: another replica held the lease."""

    async def hold(self) -> bool:
        """Take or renew the lease; True while this replica is the driver."""
        held: bool = await self.store.run(
            self.db.acquire_lease, LEASE, self.holder, self.ttl, self.clock.now()
        )
        if held != self.driving:
            self.driving = held
            log.warning(
                "rollout driver: replica %s %s the %s lease",
                self.holder,
                "holds" if held else "lost",
                LEASE,
            )
            if held and self._refused:
                await self._audit_takeover()
        self._refused = not held
        return held

    async def _audit_takeover(self) -> None:
        detail = {
            "lease": LEASE,
            "holder": self.holder,
            "ttl": self.ttl,
            "reason": "the lease was held by another replica and expired or was released",
        }
        target = f"lease={LEASE}"
        await record_automatic(self.audit, "rollout.driver_takeover", target, self.source, detail)

    async def release(self) -> None:
        """Give the lease up: renewing it with a negative TTL leaves it expired."""
        try:
            await self.store.run(self.db.acquire_lease, LEASE, self.holder, -1.0, self.clock.now())
        except Exception as exc:  # stopping anyway; the lease then expires after its TTL
            log.warning("rollout driver: could not release the lease: %s", exc)
            return
        self.driving = False
        log.warning("rollout driver: replica %s released the %s lease", self.holder, LEASE)


class Delivery:
    """Sends what storage holds for the hosts streaming to this replica: each pending assignment,
    and each approval decision queued by another replica. Reads only assignments still pending
    (few once a wave has applied) and decisions still waiting (usually none), not every host's.

    Runs every tick on every replica, driver or not: the driver's assigner sends what it issues
    to its own streams, but an operator's abort or rollback handled by another replica issues
    assignments there, and hosts streaming to a third replica (or to the driver) would otherwise
    get them only when they reconnect. Each stream remembers the highest sequence it carried
    (``Connection.sent_seq``, set from the Hello when it opens), so a sequence the assigner, the
    Hello or an earlier pass already sent is never sent twice on one stream.

    A queued decision is claimed in storage before it is sent (``claim_decision``: one replica
    wins), so a host seen by two replicas during a reconnect still gets it once; if the stream
    closed before the decision could be queued on it, the claim is given back for the replica
    the host reconnects to. Expired decisions are never sent, and are deleted every
    :data:`PURGE_EVERY` seconds.

    The same pass runs the revocation sweep (:class:`RevocationSweep`, every few seconds): a
    host or certificate revoked through another replica loses its stream here too.

    ``clock`` and ``replica`` (``Settings.holder``, recorded as ``delivered_by``) default to the
    wall clock and "" for callers that predate decisions."""

    def __init__(
        self,
        store: StorageThread,
        connections: Connections,
        clock: Clock | None = None,
        replica: str = "",
    ) -> None:
        self.store = store
        self.db = store.storage
        self.connections = connections
        self.clock: Clock = clock or SystemClock()
        self.replica = replica
        self._next_purge = -math.inf
        self.revocations = RevocationSweep(store, connections, self.clock)

    async def deliver(self) -> int:
        """One pass; returns how many assignments and decisions it queued on streams."""
        await self._purge()
        try:
            await self.revocations.sweep()  # first: nothing more goes to a revoked host
        except Exception:  # retried next tick; admit still refuses the host when it reconnects
            log.exception("revocation sweep failed; retried in %gs", self.revocations.every)
        if not len(self.connections):
            return 0
        sent = 0
        for record in await self.store.run(self.db.pending_assignments):
            conn = self.connections.get(record.host_id)
            if conn is not None and conn.send_assignment(record):
                sent += 1
        try:
            sent += await self._decisions()
        except Exception:  # a decision problem must not stop assignments, nor the rollout tick
            log.exception("approval decisions: delivery pass failed; retried next tick")
        return sent

    async def _decisions(self) -> int:
        now = self.clock.now()
        sent = 0
        for decision in await self.store.run(self.db.undelivered_decisions, now):
            conn = self.connections.get(decision.host_id)
            if conn is None or conn.closed:
                continue
            if not await self.store.run(self.db.claim_decision, decision.nonce, self.replica, now):
                continue  # another replica sent it (or it expired in between)
            if conn.send(decision_message(decision.envelope)):
                sent += 1
                _log_sent(decision, self.replica)
            else:
                await self.store.run(self.db.unclaim_decision, decision.nonce, self.replica)
        return sent

    async def _purge(self) -> None:
        if self.clock.monotonic() < self._next_purge:
            return
        self._next_purge = self.clock.monotonic() + PURGE_EVERY
        try:
            gone = await self.store.run(self.db.purge_decisions, self.clock.now())
        except Exception:  # housekeeping only: an expired decision is never sent anyway
            log.exception("approval decisions: purge failed; retried in %gs", PURGE_EVERY)
            return
        if gone:
            log.info("approval decisions: deleted %d expired", gone)


def _log_sent(decision: DecisionRecord, replica: str) -> None:
    log.info(
        "approval decision %s for %s (approval %s), queued by %s, sent by %s",
        decision.nonce,
        decision.host_id,
        decision.approval_id,
        decision.queued_by or "?",
        replica or "this replica",
    )
