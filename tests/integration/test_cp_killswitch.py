"""The central kill switch and the fleet storm breaker, over real streams."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cp_harness import cluster, execution, run, until

from stanch.v1 import admin_pb2


def test_a_central_pause_reaches_every_connected_agent_within_a_second(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            web = [await c.agent(f"web-{i}", {"env": "prod", "role": "web"}) for i in range(4)]
            db = [await c.agent(f"db-{i}", {"env": "prod", "role": "db"}) for i in range(2)]
            await until(lambda: len(c.plane.connections) == 6, what="six streams")
            asked = time.monotonic()
            reply = await c.admin(
                "Pause",
                admin_pb2.PauseRequest(policy="nginx", for_seconds=3600, reason="incident", by="t"),
            )
            assert reply.reached == 6
            await until(lambda: all("nginx" in s.pauses for s in web + db), 1.0, "pause arrival")
            assert time.monotonic() - asked < 1.0
            pause = web[0].pauses["nginx"]
            assert abs(pause.until - (time.time() + 3600)) < 5
            assert pause.reason == "incident" and pause.by == "t"

            narrow = admin_pb2.PauseRequest(selector={"role": "db"}, reason="db work", by="t")
            assert (await c.admin("Pause", narrow)).reached == 2
            await until(lambda: all("*" in s.pauses for s in db), what="selector pause")
            assert not any("*" in s.pauses for s in web)
            assert db[0].pauses["*"].until == 0  # no --for: until resumed

            late = await c.agent("web-late", {"env": "prod", "role": "web"})
            await until(lambda: "nginx" in late.pauses, what="a late joiner gets active pauses")
            assert "*" not in late.pauses

            listed = await c.admin("ListPauses", admin_pb2.ListPausesRequest())
            assert sorted(p.scope for p in listed.pauses) == ["*", "nginx"]
            resumed = await c.admin("Resume", admin_pb2.ResumeRequest(policy="nginx"))
            assert len(resumed.pauses) == 1 and resumed.reached == 7
            await until(lambda: not any("nginx" in s.pauses for s in [*web, *db, late]))
            assert all("nginx" in s.resumes for s in web)
            assert [
                p.scope for p in (await c.admin("ListPauses", admin_pb2.ListPausesRequest())).pauses
            ] == ["*"]

    run(scenario())


def test_the_storm_breaker_pauses_a_policy_firing_on_too_many_hosts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:  # fraction 0.3, at least 3 hosts, window 60 s
            sims = [await c.agent(f"h{i}") for i in range(10)]
            await until(lambda: len(c.plane.connections) == 10, what="ten streams")
            for s in sims[:3]:  # 3 of 10 is not more than 30%: no trip
                await s.heartbeat(["disk-full"])
            await until(lambda: c.plane.storm.firing_hosts("disk-full", time.time()) == 3)
            await asyncio.sleep(0.2)  # a few storm checks pass
            assert not any(s.pauses for s in sims)
            await sims[3].heartbeat(["disk-full", "nginx"])
            await until(lambda: all("disk-full" in s.pauses for s in sims), 2.0, "storm pause")
            pause = sims[9].pauses["disk-full"]
            assert pause.by == "storm-breaker" and "4 of 10 hosts" in pause.reason
            assert "nginx" not in sims[0].pauses
            escalations = await c.admin("ListEscalations", admin_pb2.ListEscalationsRequest())
            assert [(e.source, e.policy) for e in escalations.escalations] == [
                ("storm-breaker", "disk-full")
            ]
            for s in sims[4:8]:  # already paused: no second trip, no second page
                await s.heartbeat(["disk-full"])
            await until(lambda: c.plane.storm.firing_hosts("disk-full", time.time()) >= 4)
            listed = await c.admin("ListPauses", admin_pb2.ListPausesRequest())
            assert len(listed.pauses) == 1

    run(scenario())


def test_execution_reports_feed_the_storm_breaker_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            sims = [await c.agent(f"h{i}") for i in range(5)]
            for n, s in enumerate(sims[:3]):  # 3 of 5 > 30%
                await s.report(execution(n + 1, "restart-app", "fixed"))
            await until(lambda: all("restart-app" in s.pauses for s in sims), 2.0, "storm")

    run(scenario())
