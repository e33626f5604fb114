"""Staged rollouts end to end: real server, real SQLite, simulated agents on real gRPC streams.

The agents verify every assignment with the agent's own code; "bad bundle" means the agents
refuse it, or take it and then report failing remediations, the two ways a canary shows harm.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cp_harness import Cluster, SimAgent, cluster, execution, run, until

from controlplane.waves import assign_waves, parse_waves
from stanch.v1 import admin_pb2


async def fleet(
    c: Cluster, count: int, digest: str, version: int = 1, **kw: object
) -> list[SimAgent]:
    return [
        await c.agent(f"web-{i:02d}", {"env": "prod"}, digest=digest, version=version, **kw)
        for i in range(count)
    ]


async def ended(c: Cluster, rollout_id: str, timeout: float = 10.0) -> admin_pb2.RolloutStatus:
    async def done() -> admin_pb2.RolloutStatus | None:
        status = await c.status(rollout_id)
        return status if status.state not in ("running", "paused") else None

    result: admin_pb2.RolloutStatus = await until(done, timeout, f"rollout {rollout_id} to end")
    return result


def test_a_good_bundle_rolls_out_in_cumulative_waves(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            v1 = await c.publish(c.bundle(1))
            prod = await fleet(c, 12, v1.digest)
            staging = await c.agent("stage-1", {"env": "staging"}, digest=v1.digest, version=1)
            v2 = await c.publish(c.bundle(2))
            started = await c.rollout(v2.digest, waves=("1", "25%", "100%"), bake=0.3)
            status = await ended(c, started.id)
            assert status.state == "completed", status.reason
            await until(lambda: all(s.on == v2.digest for s in prod), what="every prod host on v2")
            assert staging.on == v1.digest and not staging.accepted
            # cumulative waves: 1, then 3 (25% of 12), then all 12, in the hash order
            hosts = c.plane.db.rollout_hosts(started.id)
            by_wave = {w: sorted(h.host_id for h in hosts if h.wave == w) for w in range(3)}
            assert [len(by_wave[w]) for w in range(3)] == [1, 2, 9]
            expected = assign_waves(
                started.id, parse_waves(["1,25%,100%"]), [s.host_id for s in prod]
            )
            assert all(expected[h] == w for w, names in by_wave.items() for h in names)
            # each wave was assigned only after the previous one baked
            for w in (0, 1):
                last = max(h.assigned_at for h in hosts if h.wave == w)
                first_next = min(h.assigned_at for h in hosts if h.wave == w + 1)
                assert first_next - last >= 0.3 - 0.05
            assert [w.state for w in status.waves] == ["passed"] * 3
            assert all(g.passed for g in status.gates)
            for s in prod:
                assert [a.rollout_id for a in s.accepted] == [started.id]

    run(scenario())


def test_a_bad_bundle_is_halted_at_the_canary_and_rolled_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            v1 = await c.publish(c.bundle(1))
            v2 = await c.publish(c.bundle(2))

            def refuse_v2(a):
                return (False, "invalid_policy") if a.bundle_digest == v2.digest else (True, "")

            sims = await fleet(c, 10, v1.digest, verdict=refuse_v2)
            started = await c.rollout(v2.digest, waves=("1", "50%", "100%"), bake=5.0)
            status = await ended(c, started.id)
            assert status.state == "rolled_back"
            assert "failed_applies" in status.reason and "invalid_policy" in status.reason
            touched = [s for s in sims if s.accepted]
            assert len(touched) == 1, "blast radius is the canary"
            canary = touched[0]
            await until(lambda: len(canary.accepted) == 2, what="the rollback assignment")
            first, back = canary.accepted
            assert first.bundle_digest == v2.digest
            assert back.bundle_digest == v1.digest and back.seq > first.seq
            assert canary.on == v1.digest
            assert status.rolled_back == 1 and status.waves[0].state == "halted"
            escalations = await c.admin("ListEscalations", admin_pb2.ListEscalationsRequest())
            assert any("rolled_back" in e.message for e in escalations.escalations)

    run(scenario())


def test_failing_remediations_on_the_canary_roll_it_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            v1 = await c.publish(c.bundle(1))
            v2 = await c.publish(c.bundle(2))
            sims = await fleet(c, 8, v1.digest)
            started = await c.rollout(v2.digest, waves=("2", "100%"), bake=5.0)
            await until(lambda: sum(s.on == v2.digest for s in sims) == 2, what="canaries")
            canaries = [s for s in sims if s.on == v2.digest]
            for n, s in enumerate(canaries):
                await s.report(execution(1, "heartbeat", "failed", at=time.time() + n))
            status = await ended(c, started.id)
            assert status.state == "rolled_back" and "failure_rate" in status.reason
            await until(lambda: all(s.on == v1.digest for s in sims), what="rollback applied")
            assert sum(1 for s in sims if s.accepted) == 2

    run(scenario())


def test_an_observe_mode_gate_is_shown_but_never_halts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            v1 = await c.publish(c.bundle(1))
            v2 = await c.publish(c.bundle(2))
            sims = await fleet(c, 4, v1.digest)
            started = await c.rollout(
                v2.digest, waves=("1", "100%"), bake=0.5, gate_modes={"failure_rate": "observe"}
            )
            canary = await until(lambda: next((s for s in sims if s.on == v2.digest), None))
            await canary.report(execution(1, "heartbeat", "not_fixed"))
            status = await ended(c, started.id)
            assert status.state == "completed"
            gate = next(g for g in status.gates if g.name == "failure_rate")
            assert gate.mode == "observe" and not gate.passed and gate.value == 1.0

    run(scenario())


def test_one_active_rollout_per_selector(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            v1 = await c.publish(c.bundle(1))
            first = await c.rollout(v1.digest, bake=60)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.rollout(v1.digest, selector={"env": "prod", "region": "eu"})
            assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert first.id in (info.value.details() or "")
            other = await c.rollout(v1.digest, selector={"env": "staging"})
            assert other.state == "running"
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await c.rollout(v1.digest, selector={"env": "dev"}, waves=("5%", "50%"))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "100%" in (bad.value.details() or "")

    run(scenario())


def test_hosts_joining_mid_rollout_get_the_bundle_of_their_wave(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            v1 = await c.publish(c.bundle(1))
            first = await c.rollout(v1.digest, waves=("100%",), bake=0.1)
            sims = await fleet(c, 5, "", version=0)
            assert (await ended(c, first.id)).state == "completed"
            await until(lambda: all(s.on == v1.digest for s in sims), what="v1 everywhere")
            v2 = await c.publish(c.bundle(2))
            started = await c.rollout(v2.digest, waves=("1", "100%"), bake=30.0)
            await until(lambda: sum(s.on == v2.digest for s in sims) == 1, what="the canary")
            specs = parse_waves(["1,100%"])
            names = [f"late-{i}" for i in range(200)]
            current = [s.host_id for s in sims]

            def wave_if_joined(name: str) -> int:
                return assign_waves(started.id, specs, [*current, name])[name]

            early = next(n for n in names if wave_if_joined(n) == 0)
            late = next(n for n in names if wave_if_joined(n) == 1)
            joiner_later = await c.agent(late, {"env": "prod"})
            await until(lambda: joiner_later.on == v1.digest, what="a wave-2 joiner gets v1")
            joiner_early = await c.agent(early, {"env": "prod"})
            await until(lambda: joiner_early.on == v2.digest, what="a canary-wave joiner gets v2")
            assert joiner_later.on == v1.digest  # still: its wave has not been reached
            await c.admin(
                "ControlRollout",
                admin_pb2.ControlRolloutRequest(id=started.id, action="abort", reason="test over"),
            )
            assert (await c.status(started.id)).state == "aborted"
            await until(lambda: joiner_early.on == v1.digest, what="abort rolls the joiner back")

    run(scenario())


def test_pause_holds_the_wave_and_resume_continues(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            v1 = await c.publish(c.bundle(1))
            v2 = await c.publish(c.bundle(2))
            sims = await fleet(c, 4, v1.digest)
            started = await c.rollout(v2.digest, waves=("1", "100%"), bake=0.3)
            await until(lambda: any(s.on == v2.digest for s in sims), what="canary")
            control = admin_pb2.ControlRolloutRequest(id=started.id, action="pause", by="t")
            paused = await c.admin("ControlRollout", control)
            assert paused.state == "paused" and "pause by t" in paused.reason
            await until(lambda: time.time() > started.created_at + 1.0)
            assert sum(s.on == v2.digest for s in sims) == 1, "no progress while paused"
            with pytest.raises(grpc.aio.AioRpcError) as twice:
                await c.admin("ControlRollout", control)
            assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            control.action = "resume"
            await c.admin("ControlRollout", control)
            assert (await ended(c, started.id)).state == "completed"

    run(scenario())
