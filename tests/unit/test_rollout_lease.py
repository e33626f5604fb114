"""The rollout-driver lease between two engines on one real SQLite database (injected clock):
one drives at a time, a clean stop hands over at once, and only a *takeover* (the lease was held
by another replica) is audited, never a replica taking a free lease at start."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.clock import FakeClock
from controlplane.assigner import Assigner
from controlplane.connections import Connections
from controlplane.rollout_engine import RolloutEngine
from controlplane.rollout_lease import LEASE
from controlplane.storage.base import Signable
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage


def sign(item: Signable) -> bytes:
    return item.envelope().payload


def test_only_a_takeover_is_audited_and_a_clean_stop_hands_over(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        stores = [StorageThread(SqliteStorage(tmp_path / "cp.db")) for _ in range(2)]
        a, b = (
            RolloutEngine(s, Assigner(s, Connections(), sign, clock), clock, holder=name, tick=1.0)
            for s, name in zip(stores, ("a", "b"), strict=True)
        )
        try:
            assert await a.lease.hold() and a.driving
            assert not await b.lease.hold() and not b.driving
            assert await a.audit.entries() == []  # a free lease taken at start: no entry
            clock.advance(a.lease.ttl - 1)
            assert await a.lease.hold()  # renewed in time
            assert not await b.lease.hold()
            await a.lease.release()
            assert not a.driving
            assert await b.lease.hold() and b.driving  # at once, not after the TTL
            (entry,) = await b.audit.entries()
            assert (entry.actor, entry.via, entry.action) == (
                "control-plane",
                "system",
                "rollout.driver_takeover",
            )
            assert (entry.target, entry.source) == (f"lease={LEASE}", "rollout-driver/b")
            assert not await a.lease.hold()  # a ticks on, refused while b drives
            clock.advance(b.lease.ttl + 1)  # b stalls past its TTL: a takes over again
            assert await a.lease.hold()
            assert not await b.lease.hold() and not b.driving
            sources = [e.source for e in await a.audit.entries()]
            assert sources == ["rollout-driver/b", "rollout-driver/a"]  # oldest first
            assert (await a.audit.verify()).ok
        finally:
            for store in stores:
                store.close()

    asyncio.run(main())
