"""What one session of the fleet client does on its stream, part of ``FleetClient``
(``agent.fleet.client``, which describes the lifecycle): the reader, heartbeat, reporter and
applier tasks, the state they share for one session, and the bundle fetch the applier uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import grpc.aio

from agent.clock import Clock
from agent.config import AgentConfig
from agent.fleet import wire
from agent.fleet.apply import FETCH_FAILED, Applier, FetchError
from agent.fleet.approval import DecisionApplier
from agent.fleet.client_channel import SessionLost, describe
from agent.fleet.config import ControlPlaneConfig
from agent.fleet.health import Health, LiveState, read_pointer, summarize
from agent.fleet.outbox import Outbox
from agent.fleet.pause import apply_pause, apply_resume
from agent.journal import Journal
from agent.logs import log_event
from agent.pauses import PauseFile
from stanch.v1 import fleet_pb2 as pb
from stanch.v1 import fleet_pb2_grpc as pb_grpc

ACK_TIMEOUT = 60.0
FETCH_TIMEOUT = 120.0
WINDOW_BATCHES = 4
POLL = 0.5
"""How often the reporter looks at the outbox when nothing woke it."""


@dataclass
class ClientStats:
    """Counters for tests, status and metrics (read from other threads; ints only)."""

    sessions: int = 0
    reports_sent: int = 0
    reports_acked: int = 0
    heartbeats: int = 0
    assignments: int = 0
    last_error: str = ""
    last_connected_at: float | None = None
    """Wall time the stream was last up (set on connect, and on every message heard)."""


@dataclass
class Session:
    outgoing: asyncio.Queue[pb.AgentMessage]
    wake: asyncio.Event
    inflight: dict[int, float] = field(default_factory=dict)
    """Report id -> monotonic time sent, for ids sent on this stream and not yet acked."""
    heard: bool = False


class SessionTasks:
    """The tasks that share one session's stream, as methods of ``FleetClient``, which sets
    these attributes in its ``__init__``."""

    config: AgentConfig
    settings: ControlPlaneConfig
    journal: Journal
    outbox: Outbox
    clock: Clock
    applier: Applier
    approvals: DecisionApplier
    pauses: PauseFile
    stats: ClientStats
    _live: LiveState

    async def _read(
        self,
        call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.ControlMessage],
        session: Session,
        assignments: asyncio.Queue[bytes],
    ) -> None:
        async for message in call:
            session.heard = True
            self.stats.last_connected_at = self.clock.now()
            kind = message.WhichOneof("body")
            if kind == "ack":
                ids = list(message.ack.report_ids)
                for report_id in ids:
                    session.inflight.pop(report_id, None)
                self.stats.reports_acked += await asyncio.to_thread(self.outbox.ack, ids)
                session.wake.set()
            elif kind == "assignment":
                self.stats.assignments += 1
                await assignments.put(message.assignment.envelope)
            elif kind == "approval_decision":  # signed; checked in agent.fleet.approval
                envelope = message.approval_decision.envelope
                await asyncio.to_thread(self.approvals.apply, envelope)
            elif kind in ("pause", "resume"):
                await asyncio.to_thread(self._pause, message)
        raise SessionLost("the control plane closed the stream")

    def _pause(self, message: pb.ControlMessage) -> None:
        """Write a central pause or resume to the pause file. A file that cannot be written (a
        full disk) is logged, not fatal: the control plane repeats pauses to a reconnecting
        agent, and dropping the stream would not make the disk any emptier."""
        try:
            if message.HasField("pause"):
                p = message.pause
                apply_pause(self.pauses, p.scope, p.until or None, p.reason, p.by, self.clock.now())
            else:
                apply_resume(self.pauses, message.resume.scope)
        except OSError as exc:
            log_event("central_pause_failed", logging.ERROR, error=str(exc))

    async def _heartbeats(self, session: Session) -> None:
        while True:
            await asyncio.to_thread(self.applier.rejections.scan)
            health = await asyncio.to_thread(self._health)
            await session.outgoing.put(wire.heartbeat(self.clock.now(), health))
            self.stats.heartbeats += 1
            await asyncio.sleep(self.settings.heartbeat)

    def _health(self) -> Health:
        pointer = read_pointer(self.config.state_dir)
        return summarize(self._live, self.journal, self.outbox, pointer, self.clock.now())

    async def _report(self, session: Session) -> None:
        batch = self.settings.report_batch
        window = batch * WINDOW_BATCHES
        sent_upto = 0
        while True:
            if session.inflight and time.monotonic() - min(session.inflight.values()) > ACK_TIMEOUT:
                raise SessionLost(f"no ack for {len(session.inflight)} reports in {ACK_TIMEOUT:g}s")
            room = min(batch, window - len(session.inflight))
            if room > 0:
                await asyncio.to_thread(self.approvals.scan)  # approval changes -> outbox
                rows = await asyncio.to_thread(self.outbox.pending, sent_upto, room)
                if rows:
                    now = time.monotonic()
                    session.inflight.update((r.id, now) for r in rows)
                    sent_upto = rows[-1].id
                    await session.outgoing.put(wire.report_batch(rows))
                    self.stats.reports_sent += len(rows)
                    continue
            session.wake.clear()
            # Not asyncio.wait_for: on 3.11 it swallows a cancellation that lands as the event
            # fires (python/cpython#86296), and this task then outlives its session forever.
            waiter = asyncio.ensure_future(session.wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=POLL)
            finally:
                waiter.cancel()

    async def _apply(
        self, stub: pb_grpc.FleetStub, session: Session, assignments: asyncio.Queue[bytes]
    ) -> None:
        async def fetch(digest: str, max_bytes: int) -> bytes:
            return await fetch_bundle(stub, digest, max_bytes)

        while True:
            envelope = await assignments.get()
            # Shielded: a stream that breaks mid-install must not abandon the bookkeeping (the
            # install itself runs on in its thread); the result goes out on this stream if it
            # still lives, and the next Hello carries the outcome either way.
            outcome = await asyncio.shield(self.applier.apply(envelope, fetch))
            await session.outgoing.put(wire.apply_result(outcome))


async def fetch_bundle(stub: pb_grpc.FleetStub, digest: str, max_bytes: int) -> bytes:
    """The bundle's bytes from ``FetchBundle``: chunks in order, never more than ``max_bytes``."""
    data = bytearray()
    total = None
    call = stub.FetchBundle(pb.FetchBundleRequest(digest=digest), timeout=FETCH_TIMEOUT)
    try:
        async for chunk in call:
            if chunk.offset != len(data):
                raise FetchError(
                    FETCH_FAILED, f"chunk at offset {chunk.offset}, expected {len(data)}"
                )
            total = chunk.total or total
            if (total or 0) > max_bytes or len(data) + len(chunk.data) > max_bytes:
                raise FetchError("too_large", f"bundle {digest} is over {max_bytes} bytes")
            data += chunk.data
    except grpc.aio.AioRpcError as exc:
        raise FetchError(FETCH_FAILED, f"FetchBundle {digest}: {describe(exc)}") from None
    finally:
        call.cancel()
    if total is not None and len(data) != total:
        raise FetchError(FETCH_FAILED, f"got {len(data)} of {total} bytes of {digest}")
    return bytes(data)


async def drain(queue: asyncio.Queue[pb.AgentMessage]) -> AsyncIterator[pb.AgentMessage]:
    """The request stream: whatever the tasks queue, in order, for as long as the call lives."""
    while True:
        yield await queue.get()
