"""Storage for approval decisions on their way to another replica's stream.

An operator may decide an approval through any control-plane replica, while the host streams to
one of them (``agents.replica``). When that is another replica, the replica the operator called
signs the decision and queues it here; every replica's delivery pass
(``controlplane.rollout_lease.Delivery``) sends the queued decisions of the hosts streaming to it.
Kept apart from ``base`` like the security records; ``Storage`` includes this Protocol, so every
backend implements it.

The rules every backend keeps:

- a decision is sent at most once: :meth:`DecisionStorage.claim_decision` marks it delivered in
  one conditional update, and only the caller whose update changed the row may send it (two
  replicas that both see a host's stream during a reconnect cannot both send);
- an expired decision is never claimed, whatever its delivery state, and
  :meth:`DecisionStorage.purge_decisions` deletes it. The signed decision carries the same
  expiry, so an agent refuses it anyway; the table only stops a late one from being tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controlplane.storage.base_pki import Row


@dataclass(frozen=True)
class DecisionRecord:
    host_id: str
    nonce: str
    """The decision's random nonce (``ApprovalDecision.nonce``): unique, the key."""
    approval_id: str
    envelope: bytes
    """The signed decision (DSSE JSON), exactly as it goes on the stream."""
    created_at: float
    expires_at: float
    """The signed decision's own expiry: not delivered after it."""
    queued_by: str = ""
    """The replica the operator called (``Settings.holder``)."""
    delivered_at: float = 0.0
    """0 while waiting; set when a replica claimed it for its stream."""
    delivered_by: str = ""


class DecisionStorage(Protocol):
    """Table ``approval_decisions``."""

    def queue_decision(self, record: DecisionRecord) -> None:
        """Store a signed decision for whichever replica holds the host's stream."""
        ...

    def undelivered_decisions(self, now: float) -> list[DecisionRecord]:
        """Decisions neither delivered nor expired at ``now``, oldest first."""
        ...

    def claim_decision(self, nonce: str, replica: str, now: float) -> bool:
        """Mark decision ``nonce`` delivered by ``replica`` at ``now`` if it is still waiting and
        unexpired; True only for the one caller that changed it (and may send it)."""
        ...

    def unclaim_decision(self, nonce: str, replica: str) -> bool:
        """Undo ``replica``'s claim (its stream closed before the decision was queued on it), so
        the replica the host reconnects to can send it; True when the claim was undone."""
        ...

    def decision(self, nonce: str) -> DecisionRecord | None: ...

    def purge_decisions(self, now: float) -> int:
        """Delete every decision expired at ``now``, delivered or not; return how many."""
        ...


def decision_record(row: Row) -> DecisionRecord:
    return DecisionRecord(
        host_id=row["host_id"],
        nonce=row["nonce"],
        approval_id=row["approval_id"],
        envelope=bytes(row["envelope"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        queued_by=row["queued_by"],
        delivered_at=row["delivered_at"],
        delivered_by=row["delivered_by"],
    )


def decision_values(d: DecisionRecord) -> tuple[str, str, str, bytes, float, float, str]:
    """The columns ``queue_decision`` writes, in ``DECISION_COLUMNS`` order."""
    return (d.nonce, d.host_id, d.approval_id, d.envelope, d.created_at, d.expires_at, d.queued_by)


DECISION_COLUMNS = "nonce, host_id, approval_id, envelope, created_at, expires_at, queued_by"
