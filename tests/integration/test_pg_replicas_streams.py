"""Two real control-plane processes on one PostgreSQL, and the agent streams each one holds:

- an operator's abort handled by the replica that is *not* the driver reaches the agents
  streaming to the driver within a few seconds, on their open streams (every replica runs the
  delivery pass), and no stream carries any assignment twice (each stream remembers the highest
  sequence it sent; a simulated agent refuses a repeat as "replayed", so a repeat would show);
- a replica that starts or stops cleanly marks only its own agents disconnected, and the agents
  of a replica killed with SIGKILL (its rows still say connected) are shown disconnected once
  they have been silent for ``--lost-after``.

Skipped, naming the URL tried, when no PostgreSQL answers (``STANCH_TEST_PG`` overrides it)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from cp_harness import SimAgent, run, until
from cp_process import ServerProcess

from stanch.v1 import admin_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))
from pg_schema import fresh_schema  # noqa: E402

LOST_AFTER = 5.0
"""``--lost-after`` in ``cp_process.FAST_FLAGS``."""


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def holder(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE name = 'rollout-driver'").fetchone()
    return str(row[0]) if row else ""


def stored(url: str) -> dict[str, tuple[bool, str]]:
    """``host -> (connected, replica)`` as the agents table says."""
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT host_id, connected, replica FROM agents").fetchall()
    return {host: (bool(connected), replica) for host, connected, replica in found}


@contextlib.asynccontextmanager
async def two_replicas(tmp_path: Path, url: str) -> AsyncIterator[tuple[ServerProcess, ...]]:
    """Replica ``a`` started first (it drives), then ``b``; both closed on the way out."""
    a = ServerProcess.create(tmp_path)
    a.db, a.name = url, "a"
    b = ServerProcess(tmp_path, a.ring, a.assign_key, db=url, name="b")
    a.start("--replica-id", "a")
    try:
        await until(lambda: holder(url) == "a", 10, "replica a to take the driver lease")
        b.start("--replica-id", "b")
        yield a, b
    finally:
        if b.proc is not None:
            await b.close()
        await a.close()


@contextlib.asynccontextmanager
async def beating(sims: list[SimAgent]) -> AsyncIterator[None]:
    """Heartbeats every 0.5 s (the rollout's lost-agent gate and the views go by them)."""

    async def loop() -> None:
        while True:
            for s in sims:
                await s.heartbeat()
            await asyncio.sleep(0.5)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_an_abort_on_another_replica_reaches_the_drivers_streams_once(
    tmp_path: Path, pg_url: str
) -> None:
    async def scenario() -> None:
        async with two_replicas(tmp_path, pg_url) as (a, b):
            v1 = await a.publish(a.bundle(1))
            v2 = await b.publish(a.bundle(2))
            on_a = [await a.agent(f"a-{i}", digest=v1.digest, version=1) for i in range(3)]
            on_b = [await b.agent(f"b-{i}", digest=v1.digest, version=1) for i in range(3)]
            sims = on_a + on_b
            async with beating(sims):
                started = await b.rollout(v2.digest, waves=("100%",), bake=600)
                await until(lambda: all(s.on == v2.digest for s in sims), 15, "v2 everywhere")
                assert holder(pg_url) == "a"  # a drives; b only took the operator's calls

                aborted_at = time.monotonic()
                request = admin_pb2.ControlRolloutRequest(
                    id=started.id, action="abort", reason="test", by="test"
                )
                assert (await b.admin("ControlRollout", request)).state == "aborted"
                await until(
                    lambda: all(s.on == v1.digest for s in on_a),
                    5,
                    "the rollback, issued by b, on the streams held by the driver a",
                )
                took = time.monotonic() - aborted_at
                await until(lambda: all(s.on == v1.digest for s in on_b), 2, "b's own agents")
                await asyncio.sleep(1.0)  # about 20 delivery passes on each replica
            print(f"rollback issued on b reached a's agents in {took:.2f} s")
            assert took < 3.0, took
            for s in sims:
                # the same streams throughout (no reconnect) ...
                assert s.ended is None, (s.host_id, s.ended)
                # ... each assignment received once: v2, then the rollback to v1; a second
                # copy of either would have been refused as replayed
                assert s.refused == [], (s.host_id, s.refused)
                assert [x.bundle_digest for x in s.accepted] == [v2.digest, v1.digest]
                assert s.accepted[0].seq < s.accepted[1].seq
            status = await a.status(started.id)
            assert status.state == "aborted"

    run(scenario())


def test_a_replica_marks_only_its_own_agents_disconnected(tmp_path: Path, pg_url: str) -> None:
    async def scenario() -> None:
        async with two_replicas(tmp_path, pg_url) as (a, b):
            on_a = [await a.agent(f"a-{i}") for i in range(2)]
            on_b = [await b.agent(f"b-{i}") for i in range(2)]
            everyone = {
                "a-0": (True, "a"),
                "a-1": (True, "a"),
                "b-0": (True, "b"),
                "b-1": (True, "b"),
            }
            await until(lambda: stored(pg_url) == everyone, 5, "four agents stored connected")

            async def listed(via: ServerProcess) -> dict[str, bool]:
                reply = await via.admin("ListAgents", admin_pb2.ListAgentsRequest())
                return {x.host_id: x.connected for x in reply.agents}

            async with beating(on_a + on_b):
                assert b.terminate() == 0  # a clean stop: b's streams end, a's do not
                await b.close_agents()
                b.agents.clear()
                a_only = {**everyone, "b-0": (False, "b"), "b-1": (False, "b")}
                assert stored(pg_url) == a_only
                b.start("--replica-id", "b")  # and a start clears only b's rows too
                await asyncio.sleep(0.5)
                assert stored(pg_url) == a_only
                assert await listed(b) == {h: c for h, (c, _) in a_only.items()}

            a.kill()  # no stop runs: a's rows still say connected
            killed_at = time.monotonic()
            assert stored(pg_url) == a_only
            assert (await listed(b))["a-0"]  # heard from within --lost-after: still shown

            async def none_connected() -> bool:
                return not any((await listed(b)).values())

            await until(
                none_connected,
                LOST_AFTER + 5,
                "a's silent agents shown disconnected after --lost-after",
            )
            assert time.monotonic() - killed_at > LOST_AFTER - 1.0

    run(scenario())
