"""A tiny fake of the control plane's Fleet service, on real gRPC over loopback.

A ``grpc.aio`` server in its own thread and event loop (as the real control plane runs it),
recording everything agents send. ``Store`` is what a real control plane would persist: reports
deduplicated by (host, id), so handing the same ``Store`` to a new ``FakeFleet`` on the same port
is a control-plane restart. Tests drive it from their own thread: ``send`` a control message to
every connected agent, ``serve`` a bundle by digest, ``wait`` for something to arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio

from stanch.v1 import fleet_pb2 as pb
from stanch.v1 import fleet_pb2_grpc as pb_grpc

T = TypeVar("T")


@dataclass
class Store:
    """What survives a fake control-plane restart."""

    reports: dict[tuple[str, int], pb.Report] = field(default_factory=dict)
    deliveries: list[int] = field(default_factory=list)
    """Every report id received, duplicates included (to tell at-least-once from exactly-once)."""


class _Servicer(pb_grpc.FleetServicer):
    def __init__(self, fake: FakeFleet) -> None:
        self.fake = fake

    async def Connect(  # noqa: N802 (the generated method name)
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Any
    ) -> AsyncIterator[pb.ControlMessage]:
        out: asyncio.Queue[pb.ControlMessage | None] = asyncio.Queue()
        fake = self.fake
        host = ""

        async def consume() -> None:
            nonlocal host
            try:
                async for message in request_iterator:
                    kind = message.WhichOneof("body")
                    with fake.lock:
                        fake.messages.append(message)
                        if kind == "hello":
                            host = message.hello.host_id
                            fake.hellos.append(message.hello)
                            fake.streams[host] = out
                        elif kind == "heartbeat":
                            fake.heartbeats.append(message.heartbeat)
                        elif kind == "apply_result":
                            fake.apply_results.append(message.apply_result)
                        elif kind == "reports":
                            ids = []
                            for report in message.reports.reports:
                                fake.store.deliveries.append(report.id)
                                fake.store.reports.setdefault((host, report.id), report)
                                ids.append(report.id)
                            if fake.auto_ack:
                                await out.put(pb.ControlMessage(ack=pb.Ack(report_ids=ids)))
            finally:
                await out.put(None)

        task = asyncio.create_task(consume())
        try:
            while (message := await out.get()) is not None:
                yield message
        finally:
            task.cancel()
            with fake.lock:
                if fake.streams.get(host) is out:
                    del fake.streams[host]

    async def FetchBundle(  # noqa: N802
        self, request: pb.FetchBundleRequest, context: Any
    ) -> AsyncIterator[pb.BundleChunk]:
        data = self.fake.bundles.get(request.digest)
        self.fake.fetches.append(request.digest)
        if data is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no bundle {request.digest}")
            return
        size = self.fake.chunk_size
        for offset in range(0, len(data), size):
            yield pb.BundleChunk(data=data[offset : offset + size], offset=offset, total=len(data))


class FakeFleet:
    def __init__(self, port: int = 0, store: Store | None = None, auto_ack: bool = True) -> None:
        self.store = store or Store()
        self.auto_ack = auto_ack
        self.chunk_size = 16 * 1024
        self.lock = threading.RLock()
        self.messages: list[pb.AgentMessage] = []
        self.hellos: list[pb.Hello] = []
        self.heartbeats: list[pb.Heartbeat] = []
        self.apply_results: list[pb.ApplyResult] = []
        self.fetches: list[str] = []
        self.bundles: dict[str, bytes] = {}
        self.streams: dict[str, asyncio.Queue[pb.ControlMessage | None]] = {}
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._ready = threading.Event()
        self._done: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeFleet:
        self._thread = threading.Thread(target=self._run, name="fake-fleet", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "fake control plane did not start"
        return self

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        server = grpc.aio.server(
            options=[
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_FleetServicer_to_server(_Servicer(self), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server
        self._ready.set()
        await self._done.wait()
        await server.stop(grace=None)

    def stop(self) -> None:
        """Kill the server (no grace): open streams break as in a crash."""
        if self._loop is not None and self._done is not None:
            with contextlib.suppress(RuntimeError):  # already stopped: the loop is closed
                self._loop.call_soon_threadsafe(self._done.set)
        if self._thread is not None:
            self._thread.join(10)

    # ---- driving it from a test ---------------------------------------------------------------

    def send(self, message: pb.ControlMessage, host: str | None = None) -> None:
        """Queue ``message`` to ``host`` (default: every connected agent)."""
        assert self._loop is not None
        with self.lock:
            queues = [q for h, q in self.streams.items() if host in (None, h)]
        assert queues, "no agent is connected"
        for queue in queues:
            self._loop.call_soon_threadsafe(queue.put_nowait, message)

    def ack(self, ids: list[int]) -> None:
        self.send(pb.ControlMessage(ack=pb.Ack(report_ids=ids)))

    def serve(self, data: bytes) -> str:
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        self.bundles[digest] = data
        return digest

    def report_ids(self) -> set[int]:
        with self.lock:
            return {report_id for _, report_id in self.store.reports}

    def reports(self) -> list[pb.Report]:
        with self.lock:
            return sorted(self.store.reports.values(), key=lambda r: r.id)

    def wait(self, predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "") -> T:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.02)
