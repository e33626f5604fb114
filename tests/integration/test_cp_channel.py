"""The Fleet channel against the real server on loopback: Hello first, acks after commit,
exactly-once reports, bundle downloads, health, reflection, operator token."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cp_harness import SimAgent, cluster, execution, run, until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import (
    reflection_pb2,
    reflection_pb2_grpc,
)

from controlplane.server import Server
from controlplane.storage.base import ReportQuery
from stanch.v1 import admin_pb2, fleet_pb2, fleet_pb2_grpc


def test_the_first_message_must_be_hello(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c, grpc.aio.insecure_channel(c.addr) as channel:
            stub = fleet_pb2_grpc.FleetStub(channel)

            async def heartbeat_first():
                yield fleet_pb2.AgentMessage(heartbeat=fleet_pb2.Heartbeat(at=1.0))

            call = stub.Connect(heartbeat_first())
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Hello" in (info.value.details() or "")

    run(scenario())


def test_connect_registers_the_agent_and_disconnect_is_noticed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            sim = await c.agent("web-1", {"env": "prod", "role": "web"})
            await until(lambda: c.plane.connections.get("web-1"), what="registration")
            listed = await c.admin("ListAgents", admin_pb2.ListAgentsRequest(selector={}))
            assert [a.host_id for a in listed.agents] == ["web-1"]
            assert listed.agents[0].connected and listed.agents[0].labels["role"] == "web"
            none = await c.admin("ListAgents", admin_pb2.ListAgentsRequest(selector={"env": "x"}))
            assert not none.agents
            await sim.close()
            c.agents.remove(sim)

            async def disconnected() -> bool:
                agent = c.plane.db.agent("web-1")
                return agent is not None and not agent.connected

            await until(disconnected, what="the host marked disconnected")

    run(scenario())


def test_reports_delivered_twice_are_stored_once_and_acked_both_times(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            sim = await c.agent("web-1")
            batch = [execution(i, "heartbeat", "fixed") for i in (1, 2, 3)]
            await sim.report(*batch)
            await until(lambda: len(sim.acks) == 3, what="first acks")
            await sim.report(*batch)  # e.g. the ack was lost and the outbox resends
            await until(lambda: len(sim.acks) == 6, what="acks for the redelivery")
            stored = c.plane.db.reports(ReportQuery(host="web-1"))
            assert sorted(r.id for r in stored) == [1, 2, 3]
            assert c.plane.ingestor.duplicates == 3
            # and after a reconnect (a new stream), still exactly once
            await sim.close()
            await sim.connect()
            await sim.report(batch[0])
            await until(lambda: len(sim.acks) == 7, what="ack after reconnect")
            assert len(c.plane.db.reports(ReportQuery(host="web-1"))) == 3

    run(scenario())


def test_many_streams_share_group_commits(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            sims = [await c.agent(f"h{i}") for i in range(20)]

            async def send(sim: SimAgent) -> None:
                for start in range(1, 51, 10):
                    await sim.report(
                        *[execution(i, "p", "fixed") for i in range(start, start + 10)]
                    )

            await asyncio.gather(*(send(s) for s in sims))
            await until(lambda: all(len(s.acks) == 50 for s in sims), what="all acks")
            assert c.plane.ingestor.rows == 1000
            assert c.plane.ingestor.commits < 100  # 100 batches; several share each fsync

    run(scenario())


def test_fetch_bundle_in_chunks_and_unknown_digest(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            data = c.bundle(1)
            info = await c.publish(data)
            async with grpc.aio.insecure_channel(c.addr) as channel:
                stub = fleet_pb2_grpc.FleetStub(channel)
                chunks = [
                    ch
                    async for ch in stub.FetchBundle(
                        fleet_pb2.FetchBundleRequest(digest=info.digest)
                    )
                ]
                got = b"".join(ch.data for ch in chunks)
                assert hashlib.sha256(got).hexdigest() == info.digest
                assert chunks[0].total == len(data)
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    async for _ in stub.FetchBundle(fleet_pb2.FetchBundleRequest(digest="0" * 64)):
                        pass
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    run(scenario())


def test_health_and_reflection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c, grpc.aio.insecure_channel(c.addr) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "stanch.v1.Fleet", "stanch.v1.Admin"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def ask():
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            async for reply in stub.ServerReflectionInfo(ask()):
                names = {s.name for s in reply.list_services_response.service}
                assert {"stanch.v1.Fleet", "stanch.v1.Admin", "grpc.health.v1.Health"} <= names
                break

    run(scenario())


def test_admin_calls_need_the_token_when_one_is_set(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, token="s3cret") as c:
            assert (await c.admin("ListAgents", admin_pb2.ListAgentsRequest())).agents == []
            async with grpc.aio.insecure_channel(c.addr) as channel:
                from stanch.v1 import admin_pb2_grpc

                stub = admin_pb2_grpc.AdminStub(channel)
                for metadata in ((), (("authorization", "Bearer wrong"),)):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.ListAgents(admin_pb2.ListAgentsRequest(), metadata=metadata)
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            sim = await c.agent("web-1")  # the agent channel is not behind the operator token
            await until(lambda: c.plane.connections.get("web-1"), what="agent connected")
            assert sim.ended is None

    run(scenario())


def test_a_second_control_plane_cannot_share_the_port(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            with pytest.raises(OSError, match="cannot listen"):
                await Server(c.plane, c.addr).start()  # no SO_REUSEPORT sharing of agents

    run(scenario())
