"""A rollout the driver completes is on the audit log as the control plane's own
``rollout.complete`` (actor ``control-plane``, via ``system``), once, with its bundle, waves,
the hosts it updated and the gates' last values; a rollout rolled back is not "completed", and
the hash chain verifies with the entry in it. Real SQLite, injected clock (the harness of
``test_audit_system``)."""

from __future__ import annotations

import json
from pathlib import Path

from test_audit_system import D2, apply_all, begin, engine_scenario, system_entries

from agent.clock import FakeClock
from controlplane.rollout_engine import RolloutEngine


def test_a_completed_rollout_is_audited_once_with_its_gates(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        rid = await begin(engine, ("1", "100%"), 0.0)
        for _ in range(6):  # canary, then the rest; bounded
            await engine.tick()
            await apply_all(engine, clock, True)
            rollout = engine.db.rollout(rid)
            assert rollout is not None
            if rollout.state == "completed":
                break
        assert rollout.state == "completed"
        await engine.tick()  # a finished rollout is not stepped again: no second entry
        entries = await engine.audit.entries()
        (entry,) = system_entries(entries, "rollout.complete")
        assert (entry.target, entry.source) == (f"id={rid}", "rollout-driver/cp-1")
        detail = json.loads(entry.detail)
        assert (detail["bundle"], detail["waves"], detail["hosts"]) == (D2, 2, 4)
        assert detail["gates"] and all(g["passed"] for g in detail["gates"])
        assert {g["name"] for g in detail["gates"]} >= {"failed_applies", "agents_lost"}
        verdict = await engine.audit.verify()
        assert verdict.ok and verdict.checked == len(entries)

    engine_scenario(tmp_path, body)


def test_a_rolled_back_rollout_is_not_audited_as_completed(tmp_path: Path) -> None:
    async def body(engine: RolloutEngine, clock: FakeClock) -> None:
        rid = await begin(engine, ("1", "100%"), 0.0)
        await engine.tick()
        await apply_all(engine, clock, False, "invalid_policy")
        await engine.tick()
        await engine.tick()
        rollout = engine.db.rollout(rid)
        assert rollout is not None and rollout.state == "rolled_back"
        entries = await engine.audit.entries()
        assert system_entries(entries, "rollout.complete") == []
        assert len(system_entries(entries, "rollout.rollback")) == 1

    engine_scenario(tmp_path, body)
