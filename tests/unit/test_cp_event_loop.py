"""``stanch-cp --event-loop``: which loop the control plane serves on, and that grpc.aio works on
it (a real server and client on loopback, on each loop)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controlplane.server import event_loop_factory, run


def test_asyncio_is_asyncio_own_loop() -> None:
    assert event_loop_factory("asyncio") is None


def test_auto_and_uvloop_pick_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    for choice in ("auto", "uvloop"):
        factory = event_loop_factory(choice)
        assert factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()


async def _health_round_trip() -> tuple[str, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        return type(asyncio.get_running_loop()).__module__, reply.status
    finally:
        await server.stop(None)


@pytest.mark.parametrize("choice", ["asyncio", "auto"])
def test_grpc_aio_serves_on_the_chosen_loop(choice: str) -> None:
    module, status = run(_health_round_trip(), event_loop_factory(choice))
    assert status == health_pb2.HealthCheckResponse.SERVING
    if choice == "asyncio":
        assert module.startswith("asyncio")
