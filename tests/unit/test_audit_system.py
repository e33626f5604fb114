"""The control plane's own actions on the audit log, in real SQLite with an injected clock: a gate
that halts a rollout (with the gate's values), a rollback finished after a crash, a fleet storm
trip; each as actor ``control-plane`` (via ``system``), and the hash chain still verifies with
them in it. A completed rollout is audited too (``test_audit_rollout_complete``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.clock import FakeClock
from controlplane.assigner import Assigner
from controlplane.audit import AuditLog
from controlplane.connections import Connections
from controlplane.killswitch import KillSwitch
from controlplane.rollout_admin import RolloutRequest, start
from controlplane.rollout_engine import RolloutEngine
from controlplane.rollouts import Timing
from controlplane.storage.base import AgentRecord, BundleRecord, Signable
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage
from controlplane.storm import StormBreaker, StormSettings
from stanch.v1 import fleet_pb2

D1, D2 = "1" * 64, "2" * 64


def sign(item: Signable) -> bytes:
    return item.envelope().payload


def fleet(tmp_path: Path, clock: FakeClock, hosts: int = 4) -> StorageThread:
    db = SqliteStorage(tmp_path / "cp.db")
    for digest, version in ((D1, 1), (D2, 2)):
        now = clock.now()
        db.put_bundle(BundleRecord(digest, "web", version, now, now + 86400, 1, ("k",), now), b"x")
    for i in range(hosts):
        db.upsert_agent(
            AgentRecord(
                f"h{i}", {"env": "prod"}, bundle_digest=D1, bundle_version=1, connected=True
            )
        )
    return StorageThread(db)


def engine_scenario(
    tmp_path: Path, body: Callable[[RolloutEngine, FakeClock], Awaitable[None]]
) -> None:
    async def main() -> None:
        clock = FakeClock()
        store = fleet(tmp_path, clock)
        assigner = Assigner(store, Connections(), sign, clock)
        timing = Timing(lost_after=600, apply_timeout=300, alive_floor=clock.now())
        engine = RolloutEngine(store, assigner, clock, timing=timing, holder="cp-1")
        try:
            await body(engine, clock)
        finally:
            store.close()

    asyncio.run(main())


async def begin(engine: RolloutEngine, waves: tuple[str, ...], bake: float) -> str:
    return (await start(engine, RolloutRequest(D2, {"env": "prod"}, waves, bake, by="t"))).id


async def apply_all(engine: RolloutEngine, clock: FakeClock, ok: bool, reason: str = "") -> None:
    for host, current in engine.db.current_assignments().items():
        if current.status != "pending":
            continue
        record = engine.db.record_apply(host, current.seq, D2, ok, reason, clock.now())
        assert record is not None
        await engine.on_apply(record, ok, reason, clock.now())


def system_entries(entries: list[Any], action: str) -> list[Any]:
    found = [e for e in entries if e.action == action]
    for entry in found:
        assert (entry.actor, entry.role, entry.via, entry.result) == (
            "control-plane",
            "admin",
            "system",
            "ok",
        )
    return found


def test_a_gate_halt_is_audited_with_the_gate_values(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        rid = await begin(engine, ("1", "100%"), 60.0)
        await engine.tick()
        await apply_all(engine, clock, False, "invalid_policy")
        await engine.tick()
        rollout = engine.db.rollout(rid)
        assert rollout is not None and rollout.state == "rolled_back"
        entries = await engine.audit.entries()
        (entry,) = system_entries(entries, "rollout.rollback")
        assert (entry.target, entry.source) == (f"id={rid}", "rollout-driver/cp-1")
        detail = json.loads(entry.detail)
        assert detail["halted_by"] == ["failed_applies"]
        assert detail["reason"] == rollout.reason and "invalid_policy" in detail["reason"]
        assert (detail["wave"], detail["bundle"]) == (1, D2)
        gate = next(g for g in detail["gates"] if g["name"] == "failed_applies")
        assert (gate["value"], gate["limit"], gate["passed"], gate["mode"]) == (
            1.0,
            0.0,
            False,
            "enforce",
        )
        verdict = await engine.audit.verify()
        assert verdict.ok and verdict.checked == len(entries) >= 1

    engine_scenario(tmp_path, body)


def test_a_resumed_rollback_is_audited(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        done = await begin(engine, ("100%",), 0.0)
        await engine.tick()
        await apply_all(engine, clock, True)
        await engine.tick()
        finished = engine.db.rollout(done)
        assert finished is not None and finished.state == "completed"
        (completed,) = system_entries(await engine.audit.entries(), "rollout.complete")
        assert completed.target == f"id={done}"
        # a crash after a rollback's state was stored, before its assignments: recover() ends it
        again = await begin(engine, ("100%",), 600.0)
        await engine.tick()
        stored = engine.db.rollout(again)
        assert stored is not None
        engine.db.put_rollout(replace(stored, state="rolled_back", reason="gate agents_lost"))
        await engine.recover()
        (resumed,) = system_entries(await engine.audit.entries(), "rollout.rollback_resumed")
        assert resumed.target == f"id={again}"
        assert json.loads(resumed.detail) == {"state": "rolled_back", "reason": "gate agents_lost"}
        assert (await engine.audit.verify()).ok

    engine_scenario(tmp_path, body)


def test_a_storm_trip_is_audited_with_its_counts_and_limits(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        store = fleet(tmp_path, clock)
        try:
            connections = Connections()
            conns = [connections.open(f"h{i}", {"env": "prod"}) for i in range(4)]
            settings = StormSettings(fraction=0.5, window=60.0, min_hosts=3, pause_for=900.0)
            storm = StormBreaker(settings)
            switch = KillSwitch(store, connections, clock, storm)
            for host in ("h0", "h1"):
                storm.fired(host, "restart-app", clock.now())
            assert await switch.check_storm() == []  # 2 of 4: not over half
            storm.fired("h2", "restart-app", clock.now())
            (trip,) = await switch.check_storm()
            assert (trip.hosts, trip.fleet) == (3, 4)
            for conn in conns:  # every connected agent got the pause
                message: fleet_pb2.ControlMessage | None = conn.queue.get_nowait()
                assert message is not None and message.pause.scope == "restart-app"
            audit = AuditLog(store, clock)
            entries = await audit.entries()
            (entry,) = system_entries(entries, "fleet.pause")
            assert (entry.target, entry.source) == ("policy=restart-app", "storm-breaker")
            detail = json.loads(entry.detail)
            assert (detail["hosts"], detail["fleet"], detail["reached"]) == (3, 4, 4)
            assert (detail["fraction"], detail["min_hosts"], detail["window"]) == (0.5, 3, 60.0)
            assert (detail["for"], detail["until"]) == (900.0, clock.now() + 900.0)
            assert detail["reason"].startswith("fleet storm: restart-app fired on 3 of 4 hosts")
            storm.fired("h3", "restart-app", clock.now())
            assert await switch.check_storm() == []  # paused now: no second trip, no entry
            assert len(await audit.entries()) == len(entries)
            verdict = await audit.verify()
            assert verdict.ok and verdict.checked == len(entries)
        finally:
            store.close()

    asyncio.run(main())
