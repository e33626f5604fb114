"""The rollout driver against real SQLite with an injected clock (no network): rollback
assignments, crash recovery, the driver lease, bake timing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from agent.clock import FakeClock
from controlplane.assigner import Assigner
from controlplane.connections import Connections
from controlplane.rollout_admin import RolloutRequest, start
from controlplane.rollout_engine import RolloutEngine
from controlplane.rollouts import Timing
from controlplane.storage.base import AgentRecord, AssignmentPayload, BundleRecord
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage

D1, D2 = "1" * 64, "2" * 64


def sign(payload: AssignmentPayload) -> bytes:
    return f"{payload.host_id}:{payload.seq}:{payload.bundle_digest}".encode()


def scenario(tmp_path: Path, body: Callable[[RolloutEngine, FakeClock], Awaitable[None]]) -> None:
    async def main() -> None:
        clock = FakeClock()
        db = SqliteStorage(tmp_path / "cp.db")
        for digest, version in ((D1, 1), (D2, 2)):
            db.put_bundle(
                BundleRecord(
                    digest,
                    "web",
                    version,
                    clock.now() - 10,
                    clock.now() + 86400,
                    1,
                    ("k",),
                    clock.now(),
                ),
                b"x",
            )
        for i in range(10):
            db.upsert_agent(
                AgentRecord(
                    f"h{i}",
                    {"env": "prod"},
                    bundle_digest=D1,
                    bundle_version=1,
                    last_seen=clock.now(),
                    connected=True,
                )
            )
        store = StorageThread(db)
        assigner = Assigner(store, Connections(), sign, clock)
        timing = Timing(lost_after=600, apply_timeout=300, alive_floor=clock.now())
        engine = RolloutEngine(store, assigner, clock, timing=timing, holder="me")
        try:
            await body(engine, clock)
        finally:
            store.close()

    asyncio.run(main())


async def begin(engine: RolloutEngine, bake: float = 60.0) -> str:
    request = RolloutRequest(D2, {"env": "prod"}, ("1", "50%", "100%"), bake, by="t")
    return (await start(engine, request)).id


def updated(engine: RolloutEngine) -> dict[str, str]:
    assigned = engine.db.current_assignments()
    return {h: a.bundle_digest for h, a in assigned.items()}


def test_a_refused_canary_is_rolled_back_with_a_higher_sequence(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        rid = await begin(engine)
        await engine.tick()
        (canary,) = updated(engine)
        first = engine.db.current_assignment(canary)
        assert first is not None and first.bundle_digest == D2
        record = engine.db.record_apply(canary, first.seq, D2, False, "invalid_policy", clock.now())
        assert record is not None
        await engine.on_apply(record, False, "invalid_policy", clock.now())
        await engine.tick()
        rollout = engine.db.rollout(rid)
        assert rollout is not None and rollout.state == "rolled_back"
        back = engine.db.current_assignment(canary)
        assert back is not None and back.bundle_digest == D1 and back.seq == first.seq + 1
        assert [h.status for h in engine.db.rollout_hosts(rid)] == ["rolled_back"]
        assert len(updated(engine)) == 1  # nobody else was touched
        (escalation,) = engine.db.escalations(0)
        assert "1 host(s) rolled back" in escalation.message

    scenario(tmp_path, body)


def test_waves_wait_for_the_bake_on_the_injected_clock(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        rid = await begin(engine, bake=60)
        await engine.tick()
        for host in updated(engine):
            a = engine.db.current_assignment(host)
            assert a is not None
            rec = engine.db.record_apply(host, a.seq, D2, True, "", clock.now())
            assert rec is not None
            await engine.on_apply(rec, True, "", clock.now())
        clock.advance(59)
        await engine.tick()
        assert len(updated(engine)) == 1
        clock.advance(1)
        await engine.tick()
        assert len(updated(engine)) == 5
        rollout = engine.db.rollout(rid)
        assert rollout is not None and rollout.wave == 1

    scenario(tmp_path, body)


def test_the_last_apply_of_a_wave_wakes_the_driver_at_once(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        await begin(engine, bake=0)
        await engine.tick()
        assert len(updated(engine)) == 1
        await engine.tick()  # wave 2 begins only once the canary has applied
        assert len(updated(engine)) == 1
        (canary,) = updated(engine)
        a = engine.db.current_assignment(canary)
        assert a is not None
        rec = engine.db.record_apply(canary, a.seq, D2, True, "", clock.now())
        assert rec is not None
        engine._wake.clear()
        await engine.on_apply(rec, True, "", clock.now())
        assert engine._wake.is_set()  # no tick needed: the wave's last host applied
        await engine.tick()
        second = [h for h in updated(engine) if h != canary]
        assert len(second) == 4
        engine._wake.clear()
        for host in second[:-1]:
            b = engine.db.current_assignment(host)
            assert b is not None
            rec = engine.db.record_apply(host, b.seq, D2, True, "", clock.now())
            assert rec is not None
            await engine.on_apply(rec, True, "", clock.now())
            assert not engine._wake.is_set()  # others in the wave still pending
        b = engine.db.current_assignment(second[-1])
        assert b is not None
        rec = engine.db.record_apply(second[-1], b.seq, D2, True, "", clock.now())
        assert rec is not None
        await engine.on_apply(rec, True, "", clock.now())
        assert engine._wake.is_set()

    scenario(tmp_path, body)


def test_an_interrupted_rollback_is_finished_at_start_up(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        rid = await begin(engine)
        await engine.tick()
        rollout = engine.db.rollout(rid)
        assert rollout is not None
        # the crash: state stored as rolled back, the rollback assignments never made
        engine.db.put_rollout(replace(rollout, state="rolled_back", reason="gate"))
        await engine.recover()
        assert set(updated(engine).values()) == {D1}
        assert {h.status for h in engine.db.rollout_hosts(rid)} == {"rolled_back"}

    scenario(tmp_path, body)


def test_only_the_lease_holder_drives_rollouts(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        await begin(engine)
        assert engine.db.acquire_lease("rollout-driver", "other-replica", 10, clock.now())
        await engine.tick()
        assert updated(engine) == {}
        clock.advance(11)  # the other replica stopped renewing
        await engine.tick()
        assert len(updated(engine)) == 1

    scenario(tmp_path, body)


def test_a_host_whose_previous_bundle_expired_is_left_and_reported(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        rid = await begin(engine)
        await engine.tick()
        old = engine.db.bundle(D1)
        assert old is not None
        clock.advance(86400 + 1)  # both bundles expired
        rollout = engine.db.rollout(rid)
        assert rollout is not None
        await engine.roll_back(replace(rollout, state="aborted"), engine.db.rollout_hosts(rid))
        (host,) = engine.db.rollout_hosts(rid)
        assert host.status == "stranded" and "expired" in host.reason

    scenario(tmp_path, body)


def test_a_transient_apply_failure_is_retried_not_counted(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        rid = await begin(engine)
        await engine.tick()
        (canary,) = updated(engine)
        conn = engine.assigner.connections.open(canary, {"env": "prod"})
        first = engine.db.current_assignment(canary)
        assert first is not None
        record = engine.db.record_apply(canary, first.seq, D2, False, "fetch_failed", clock.now())
        assert record is not None
        await engine.on_apply(record, False, "fetch_failed", clock.now())
        await engine.tick()
        rollout = engine.db.rollout(rid)
        assert rollout is not None and rollout.state == "running"
        row = engine.db.rollout_host(rid, canary)
        assert row is not None and (row.status, row.reason) == ("assigned", "fetch_failed")
        assert conn.queue.empty()
        clock.advance(5)
        await engine.tick()
        sent = conn.queue.get_nowait()
        assert sent is not None and sent.assignment.envelope == first.envelope  # same seq
        clock.advance(300)  # never applied: the apply timeout turns it into a failed apply
        await engine.tick()
        rollout = engine.db.rollout(rid)
        assert rollout is not None and rollout.state == "rolled_back"
        assert "not applied within 300s; last: fetch_failed" in rollout.reason

    scenario(tmp_path, body)
