"""The rollout driver never overwrites a rollout that another replica changed while it was
stepping it: an operator's pause, stored by a replica that is not the driver right after the
driver read the rollout, survives the driver's step (PostgreSQL, a fresh schema; the other
replica is the test writing through its own connection pool at that exact moment)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from controlplane.assigner import Assigner
from controlplane.connections import Connections
from controlplane.rollout_admin import RolloutRequest, start
from controlplane.rollout_engine import RolloutEngine
from controlplane.rollouts import Timing
from controlplane.storage.base import AgentRecord, AssignmentPayload, BundleRecord, RolloutRecord
from controlplane.storage.postgres import PostgresStorage
from controlplane.storage.runner import StorageThread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))
from pg_schema import fresh_schema  # noqa: E402

D1, D2 = "1" * 64, "2" * 64


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def sign(payload: AssignmentPayload) -> bytes:
    return f"{payload.host_id}:{payload.seq}:{payload.bundle_digest}".encode()


class InterleavedStorage:
    """The driver's storage; ``after_read`` runs once, right after its next list of active
    rollouts is read: where another replica's write lands in the race under test."""

    def __init__(self, db: PostgresStorage) -> None:
        self.db = db
        self.after_read: Callable[[], None] | None = None

    def rollouts(self, active_only: bool = False) -> list[RolloutRecord]:
        found = self.db.rollouts(active_only)
        hook, self.after_read = self.after_read, None
        if hook is not None and active_only:
            hook()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_an_operator_pause_on_another_replica_survives_the_drivers_step(pg_url: str) -> None:
    async def main() -> None:
        clock = FakeClock()
        driver_db = PostgresStorage(pg_url)
        other = PostgresStorage(pg_url)  # replica b: its own pool on the same database
        for digest, version in ((D1, 1), (D2, 2)):
            bundle = BundleRecord(
                digest, "web", version, clock.now() - 10, clock.now() + 86400, 1, ("k",), 0.0
            )
            driver_db.put_bundle(bundle, b"x")
        for i in range(4):
            driver_db.upsert_agent(
                AgentRecord(
                    f"h{i}",
                    {"env": "prod"},
                    bundle_digest=D1,
                    bundle_version=1,
                    last_seen=clock.now(),
                    connected=True,
                )
            )
        storage = InterleavedStorage(driver_db)
        store = StorageThread(storage)  # type: ignore[arg-type]  # a proxy of a real Storage
        engine = RolloutEngine(
            store,
            Assigner(store, Connections(), sign, clock),
            clock,
            timing=Timing(lost_after=600, apply_timeout=300, alive_floor=clock.now()),
            holder="a",
        )
        try:
            request = RolloutRequest(D2, {"env": "prod"}, ("1", "100%"), 60.0, by="t")
            rollout_id = (await start(engine, request)).id
            await engine.tick()  # a drives: the canary is assigned
            assert len(driver_db.current_assignments()) == 1

            def operator_pauses_on_b() -> None:
                clock.advance(1)
                stored = other.rollout(rollout_id)
                assert stored is not None and stored.state == "running"
                paused = replace(
                    stored, state="paused", reason="pause by bob", updated_at=clock.now()
                )
                other.put_rollout(paused)

            storage.after_read = operator_pauses_on_b
            clock.advance(120)  # the canary's bake is over: a would move to wave 2
            await engine.tick()
            after = other.rollout(rollout_id)
            assert after is not None and (after.state, after.reason) == ("paused", "pause by bob")
            assert after.wave == 0 and len(driver_db.current_assignments()) == 1
            await engine.tick()  # the next step plans from the stored, paused state
            again = other.rollout(rollout_id)
            assert again is not None and again.state == "paused" and again.wave == 0
        finally:
            store.close()
            other.close()

    asyncio.run(main())
