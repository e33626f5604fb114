"""Remediations that fork (``run_as``: ``user=``/``group=``) while the agent's gRPC stream is busy.

With gRPC's fork support on (grpcio's default), a child forked while a channel is busy restarts
gRPC's poller, ``subprocess`` closes its epoll descriptor before ``exec``, and the child dies
(grpc/grpc#43055): measured here as 18-48 % of children. ``agent.fleet`` turns fork support off
before grpc loads. This runs in a fresh interpreter, so the test process's own setting does not
count: only what importing the agent's fleet package does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import asyncio, json, os, subprocess, sys, time
    import agent.fleet  # must come first, as in the agent
    import grpc.aio
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    async def main():
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        busy = True

        async def pound():
            while busy:
                await stub.Check(health_pb2.HealthCheckRequest())

        tasks = [asyncio.create_task(pound()) for _ in range(4)]

        def spawn():
            done = subprocess.run(
                ["/bin/true"], capture_output=True, user=0, group=0, extra_groups=[], timeout=10
            )
            return done.returncode, done.stderr.decode(errors="replace")[-300:]

        spawned, failed, sample, deadline = 0, 0, "", time.monotonic() + 8
        while spawned < 300 and time.monotonic() < deadline:
            code, err = await asyncio.to_thread(spawn)
            spawned += 1
            if code != 0 or "epoll" in err:
                failed, sample = failed + 1, err
        busy = False
        for task in tasks:
            task.cancel()
        await channel.close()
        await server.stop(None)
        print(json.dumps({"spawned": spawned, "failed": failed, "sample": sample,
                          "setting": os.environ.get("GRPC_ENABLE_FORK_SUPPORT")}))

    asyncio.run(main())
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="run_as (user=0) needs root")
def test_run_as_children_survive_a_busy_grpc_channel() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert result["setting"] == "false"
    assert result["spawned"] >= 50, result
    assert result["failed"] == 0, result
