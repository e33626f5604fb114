"""Two real control-plane processes on one PostgreSQL: any replica serves any agent, one replica
drives rollouts at a time, and when it is killed (SIGKILL) the other takes the driver lease
within the lease TTL and finishes the rollout. That the two never drove together is checked from
both replicas' logs (lease and wave transitions, timestamped) and from the stored assignments.
A clean stop (SIGTERM) hands the lease over at once instead.

Skipped, naming the URL tried, when no PostgreSQL answers (``STANCH_TEST_PG`` overrides it)."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cp_harness import SimAgent, run, until
from cp_process import ServerProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))
from pg_schema import fresh_schema  # noqa: E402

LEASE_TTL = 5.0
"""``RolloutEngine`` lease TTL at the test's 50 ms tick: max(3 ticks, 5 s)."""


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def events(log: Path) -> list[tuple[float, str]]:
    """``(epoch seconds, message)`` of each JSON log line."""
    found = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            body = json.loads(line)
            stamp, millis = body["ts"].rstrip("Z").split(".")
            at = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000
            found.append((at, str(body["event"])))
    return found


def lease_events(log: Path) -> list[tuple[float, str]]:
    return [(at, e) for at, e in events(log) if e.startswith("rollout driver:")]


def transitions(log: Path, rollout_id: str) -> list[tuple[float, str]]:
    prefix = f"rollout {rollout_id}: "
    return [(at, e[len(prefix) :].strip()) for at, e in events(log) if e.startswith(prefix)]


def test_a_killed_driver_is_replaced_within_the_lease_ttl(tmp_path: Path, pg_url: str) -> None:
    async def scenario() -> None:
        a = ServerProcess.create(tmp_path)
        a.db, a.name = pg_url, "a"
        b = ServerProcess(tmp_path, a.ring, a.assign_key, db=pg_url, name="b")
        beating = True

        async def heartbeats(sims: list[SimAgent]) -> None:
            while beating:
                for s in sims:
                    await s.heartbeat()
                await asyncio.sleep(0.5)

        a.start("--replica-id", "a")
        beats: asyncio.Task[None] | None = None
        try:
            await until(lambda: lease_events(tmp_path / "a.log"), 10, "replica a to drive")
            b.start("--replica-id", "b")
            v1 = await a.publish(a.bundle(1))
            v2 = await b.publish(a.bundle(2))  # any replica takes operator calls
            sims = [
                await (b if i % 4 else a).agent(f"web-{i}", digest=v1.digest, version=1)
                for i in range(8)
            ]
            beats = asyncio.create_task(heartbeats(sims))
            started = await b.rollout(v2.digest, waves=("1", "50%", "100%"), bake=1.5)

            async def in_wave_two() -> bool:
                status = await b.status(started.id)
                return status.wave == 1 and status.waves[1].applied == status.waves[1].assigned > 0

            await until(in_wave_two, 15, "wave 2 applied, driven by replica a")
            updated = sum(1 for s in sims if s.on == v2.digest)
            assert updated == 4  # 50% of 8, cumulative, on both replicas' agents
            # 6 of the 8 stream to b, so some of the 4 hosts a updated are on b: a's assignments
            # reached them through b
            assert any(s.on == v2.digest for s in sims if s.addr == b.addr)

            a.kill()
            killed_at = time.time()
            for s in [s for s in sims if s.addr == a.addr]:  # a load balancer would do this
                await s.close()
                s.addr = b.addr
                await s.connect()

            async def completed() -> bool:
                return (await b.status(started.id)).state == "completed"

            await until(completed, LEASE_TTL + 15, "replica b to finish the rollout")
            await until(lambda: all(s.on == v2.digest for s in sims), 5, "v2 everywhere")

            # b took over once a's lease ran out: within the TTL (plus a tick), not before
            (took_at, took), *rest = lease_events(tmp_path / "b.log")
            assert took == "rollout driver: replica b holds the rollout-driver lease" and not rest
            assert killed_at < took_at <= killed_at + LEASE_TTL + 1.0, took_at - killed_at
            (a_took_at, _), *a_rest = lease_events(tmp_path / "a.log")
            assert not a_rest and a_took_at < took_at  # a never lost it while alive

            # never both: a's wave moves all happened before b held the lease, b's after
            by_a = transitions(tmp_path / "a.log", started.id)
            by_b = transitions(tmp_path / "b.log", started.id)
            assert by_a and by_b, (by_a, by_b)
            assert all(at < killed_at for at, _ in by_a)
            assert all(at >= took_at for at, _ in by_b)
            moves = [m for _, m in by_a + by_b]
            assert len(moves) == len(set(moves)), moves  # no step taken twice
            assert "-> completed" in moves[-1], moves

            for s in sims:
                assert len([x for x in s.accepted if x.bundle_digest == v2.digest]) == 1, s.host_id
                assert set(s.refused) <= {"replayed"}  # a copy of one already taken, at most
            status = await b.status(started.id)
            assert [w.state for w in status.waves] == ["passed"] * 3
            assert [w.assigned for w in status.waves] == [1, 3, 4]

            # a clean stop (SIGTERM) hands the lease over at once, not after its TTL
            a.start("--replica-id", "a")
            await asyncio.sleep(0.5)  # a ticks, and is refused while b holds the lease
            assert len(lease_events(tmp_path / "a.log")) == 1
            stopped_at = time.time()
            assert b.terminate() == 0
            await until(lambda: len(lease_events(tmp_path / "a.log")) == 2, 5, "a to drive again")
            (released_at, released), *_ = lease_events(tmp_path / "b.log")[1:]
            assert released == "rollout driver: replica b released the rollout-driver lease"
            (again_at, _) = lease_events(tmp_path / "a.log")[1]
            assert stopped_at <= released_at <= again_at < stopped_at + LEASE_TTL / 2
        finally:
            beating = False
            if beats is not None:
                beats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beats
            await b.close()
            await a.close()
        with psycopg.connect(pg_url) as conn:
            per_host = conn.execute(
                "SELECT host_id, count(*) FROM assignments WHERE rollout_id = %s "
                "AND bundle_digest = %s GROUP BY host_id",
                (started.id, v2.digest),
            ).fetchall()
            lease = conn.execute("SELECT holder FROM leases").fetchall()
        assert sorted(per_host) == [(f"web-{i}", 1) for i in range(8)]  # each assigned once
        assert lease == [("a",)]  # the last to drive (its clean stop expired it, kept the name)

    run(scenario())
