"""The ``stanch.v1.Fleet`` servicer: one long-lived stream per agent, and bundle downloads.

A stream's life: the first message must be ``Hello`` (anything else, or nothing within
``hello_timeout``, ends it with INVALID_ARGUMENT). The host is registered as connected and gets,
before anything else, its stored assignment if the agent has not accepted it yet, then every
central pause that applies to it; then the rollout driver decides whether it joins a wave. From
then on a reader task handles what the agent sends while this handler writes what is queued for
it. Reports are acked only after they are durable (group commit), so an agent deletes nothing the
control plane could still lose. When the stream ends for any reason the host is marked
disconnected, unless a newer stream for it has already taken over, here or on another replica
(the stored ``replica`` names the stream's holder).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from controlplane import identity
from controlplane.apply_commit import ApplyCommitter
from controlplane.connections import Connection
from controlplane.convert import health_dict
from controlplane.plane import ControlPlane
from controlplane.rollout_engine import RETRYABLE
from controlplane.storage.base import AgentRecord, ApplyResult, Report
from stanch.v1 import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger("stanch.cp.fleet")
CHUNK = 1 << 20
MAX_FIELD = 256
MAX_BODY = 64 * 1024
Context = grpc.aio.ServicerContext[fleet_pb2.AgentMessage, fleet_pb2.ControlMessage]


class FleetService(fleet_pb2_grpc.FleetServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.applies = ApplyCommitter(plane.store)

    async def Connect(  # noqa: N802 (the gRPC method name)
        self, request_iterator: AsyncIterator[fleet_pb2.AgentMessage], context: Context
    ) -> AsyncIterator[fleet_pb2.ControlMessage]:
        hello = await self._hello(request_iterator, context)
        plane = self.plane
        now = plane.clock.now()
        conn = plane.connections.open(
            hello.host_id,
            dict(hello.labels),
            context.peer(),
            hello.agent_version,
            held_seq=hello.last_assignment_seq,
            serial=identity.peer_serial(context) or "",
        )
        agent = AgentRecord(
            host_id=hello.host_id,
            labels=dict(hello.labels),
            agent_version=hello.agent_version,
            bundle_digest=hello.bundle_digest,
            bundle_version=hello.bundle_version,
            last_seen=now,
            connected=True,
            last_assignment_seq=hello.last_assignment_seq,
            replica=plane.settings.holder,
        )
        reader: asyncio.Task[None] | None = None
        try:
            await plane.store.run(plane.db.upsert_agent, agent)
            log.info("agent %s connected from %s", hello.host_id, context.peer())
            current = await plane.store.run(plane.db.current_assignment, hello.host_id)
            if current is not None and current.seq > hello.last_assignment_seq:
                conn.send_assignment(current)  # unless a delivery pass already sent it
            elif (
                current is not None
                and current.status == "pending"
                and current.seq == hello.last_assignment_seq
                and current.bundle_digest == hello.bundle_digest
            ):
                # Applied, but the ApplyResult was lost with the last stream (either side died
                # in between): the Hello says so, and nothing would ever send it again.
                await self._record(
                    hello.host_id, current.seq, current.bundle_digest, True, "", "(from Hello)"
                )
            for message in await plane.killswitch.for_host(agent.labels):
                conn.send(message)
            await plane.engine.on_join(agent)
            reader = asyncio.create_task(self._read(request_iterator, conn))
            while True:
                outgoing = await conn.queue.get()
                if outgoing is None:
                    break
                yield outgoing
        finally:
            if reader is not None:
                reader.cancel()
            if plane.connections.release(conn):
                # An agent that goes away cancels this handler, and grpc may cancel it again while
                # this cleanup waits: the write, not yet started on the storage thread, would be
                # dropped and the host left "connected" (seen under uvloop). Shielded, like the
                # audit write in auth_interceptor, it completes whatever happens to the handler.
                await asyncio.shield(self._disconnected(hello.host_id))

    async def _disconnected(self, host_id: str) -> None:
        plane = self.plane
        now, holder = plane.clock.now(), plane.settings.holder
        await plane.store.run(plane.db.set_connected, host_id, False, now, holder)
        log.info("agent %s disconnected", host_id)

    async def _hello(
        self, requests: AsyncIterator[fleet_pb2.AgentMessage], context: Context
    ) -> fleet_pb2.Hello:
        await identity.refuse_strangers(context, "Connect")  # before waiting for anything
        try:
            first = await asyncio.wait_for(anext(requests), self.plane.settings.hello_timeout)
        except (StopAsyncIteration, TimeoutError):
            first = None
        if first is None or first.WhichOneof("body") != "hello" or not first.hello.host_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message on Connect must be Hello with a host_id",
            )
        # With TLS, the Hello must name the host of the verified certificate (else refused).
        await identity.admit(self.plane, context, first.hello.host_id, "Connect")
        return first.hello

    async def _read(
        self, requests: AsyncIterator[fleet_pb2.AgentMessage], conn: Connection
    ) -> None:
        """Handle the agent's messages until its side ends; then end the stream."""
        try:
            async for message in requests:
                await self._handle(message, conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the agent reconnects and resends whatever was not acked
            log.warning("stream from %s ended: %r", conn.host_id, exc)
        finally:
            conn.close()

    async def _handle(self, message: fleet_pb2.AgentMessage, conn: Connection) -> None:
        plane = self.plane
        kind = message.WhichOneof("body")
        if kind == "heartbeat":
            health = message.heartbeat.health
            plane.heartbeat(conn.host_id, list(health.firing_policies), health_dict(health))
        elif kind == "reports":
            host = conn.host_id
            reports = [_report(host, r) for r in message.reports.reports]
            await plane.ingestor.submit(reports)
            ids = [r.id for r in reports]
            conn.send(fleet_pb2.ControlMessage(ack=fleet_pb2.Ack(report_ids=ids)))
        elif kind == "apply_result":
            await self._applied(message.apply_result, conn)
        elif kind == "hello":
            log.warning("agent %s sent a second Hello; ignored", conn.host_id)

    async def _applied(self, result: fleet_pb2.ApplyResult, conn: Connection) -> None:
        await self._record(
            conn.host_id,
            result.assignment_seq,
            result.bundle_digest,
            result.applied,
            result.reason,
            result.message,
        )

    async def _record(
        self, host_id: str, seq: int, digest: str, applied: bool, reason: str, message: str
    ) -> None:
        """Durable first (group commit with other agents' results), then acted upon."""
        plane = self.plane
        result = ApplyResult(
            host_id,
            seq,
            digest,
            applied,
            reason,
            plane.clock.now(),
            note=reason or message,
            retryable=not applied and reason in RETRYABLE,
        )
        done = await self.applies.submit(result)
        if done is None:
            log.warning("agent %s: result for unknown assignment %d", host_id, seq)
            return
        level = logging.INFO if applied else logging.WARNING
        log.log(
            level,
            "agent %s %s assignment %d (%s): %s %s",
            host_id,
            "applied" if applied else "rejected",
            seq,
            done.assignment.bundle_digest[:12],
            reason,
            message,
        )
        plane.engine.applied(done, applied)

    async def FetchBundle(  # noqa: N802 (the gRPC method name)
        self,
        request: fleet_pb2.FetchBundleRequest,
        context: grpc.aio.ServicerContext[fleet_pb2.FetchBundleRequest, fleet_pb2.BundleChunk],
    ) -> AsyncIterator[fleet_pb2.BundleChunk]:
        plane = self.plane
        await identity.admit(plane, context, None, "FetchBundle")
        data = await plane.store.run(plane.db.bundle_data, request.digest)
        if data is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"bundle {request.digest}: not published here"
            )
        total = len(data)
        for offset in range(0, total, CHUNK):
            yield fleet_pb2.BundleChunk(
                data=data[offset : offset + CHUNK], offset=offset, total=total
            )


def _report(host_id: str, r: fleet_pb2.Report) -> Report:
    """Stored as sent, bounded: an oversized field is cut, never refused (a refused report
    would block the agent's outbox forever). Positional and without a copy of a field that fits:
    this runs for every report, tens of thousands a second."""
    kind, policy, outcome, reason, body = r.kind, r.policy, r.outcome, r.reason, r.body_json
    if len(kind) > MAX_FIELD:
        kind = kind[:MAX_FIELD]
    if len(policy) > MAX_FIELD:
        policy = policy[:MAX_FIELD]
    if len(outcome) > MAX_FIELD:
        outcome = outcome[:MAX_FIELD]
    if len(reason) > MAX_FIELD:
        reason = reason[:MAX_FIELD]
    if len(body) > MAX_BODY:
        body = "{}"
    return Report(host_id, r.id, kind, policy, r.at, outcome, reason, body)
