"""``FleetClient``: the agent's one long-lived stream to the control plane.

Lifecycle. ``start()`` runs a daemon thread with its own asyncio loop (grpc.aio). Each *session*
opens a channel, waits until it is READY, opens ``Fleet.Connect`` and sends ``Hello`` first. Then
four tasks share the stream until one of them fails:

- the **reader** applies what the control plane sends: acks (delete those outbox rows),
  assignments (queued for the applier), pauses and resumes (written to the pause file);
- the **heartbeat** sends a health summary every ``heartbeat`` seconds (the first at once) and
  forwards new bundle rejections to the outbox;
- the **reporter** sends outbox rows in id order, in batches, at most ``WINDOW_BATCHES`` batches
  unacked; a batch unacked for ``ACK_TIMEOUT`` means a wedged stream and ends the session;
- the **applier** handles one assignment at a time and answers each with an ``ApplyResult``.

When a session ends (server gone, stream reset, keepalive timeout, no acks), the channel is
closed and the next session starts after a jittered exponential delay (``backoff``). Unacked rows
are simply sent again by the next session; the control plane deduplicates by id.

Nothing here is awaited by the agent's main loop: the runner hands over a ``LiveState`` snapshot
(``observe``) and writes records to the journal, whose outbox this client drains when it can.
A control plane that is down costs the host nothing but a growing (bounded) outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from agent import __version__
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig
from agent.fleet import wire
from agent.fleet.apply import FETCH_FAILED, Applier, FetchError
from agent.fleet.approval import DecisionApplier
from agent.fleet.backoff import Backoff
from agent.fleet.config import ControlPlaneConfig
from agent.fleet.enroll import EnrollError, Identity
from agent.fleet.health import Health, LiveState, read_pointer, summarize
from agent.fleet.outbox import Outbox
from agent.fleet.pause import apply_pause, apply_resume
from agent.instrumentation import ChannelSnapshot
from agent.journal import Journal
from agent.logs import log_event
from agent.pauses import PauseFile
from stanch.v1 import fleet_pb2 as pb
from stanch.v1 import fleet_pb2_grpc as pb_grpc
from stanch.v1 import pki_pb2, pki_pb2_grpc

CONNECT_TIMEOUT = 10.0
ACK_TIMEOUT = 60.0
FETCH_TIMEOUT = 120.0
WINDOW_BATCHES = 4
POLL = 0.5
"""How often the reporter looks at the outbox when nothing woke it."""
HEALTHY_SESSION = 10.0
ENROLL_TIMEOUT = 30.0
RENEW_RETRY = 60.0
"""At most this long after a failed renewal (sooner as the certificate nears its expiry)."""
"""A session that lasted this long, or heard anything from the server, resets the backoff."""


class SessionLost(Exception):
    """The stream ended or cannot go on; the message says why (logged, then reconnect)."""


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
class _Session:
    outgoing: asyncio.Queue[pb.AgentMessage]
    wake: asyncio.Event
    inflight: dict[int, float] = field(default_factory=dict)
    """Report id -> monotonic time sent, for ids sent on this stream and not yet acked."""
    heard: bool = False


def channel_options(settings: ControlPlaneConfig) -> list[tuple[str, int]]:
    """Keepalive on the client: a silently dead peer (a control plane host gone, a NAT that
    dropped the flow) is noticed in ``keepalive + 10 s`` rather than at the next write. The
    server must allow pings this often (``grpc.http2.min_ping_interval_without_data_ms``)."""
    return [
        ("grpc.keepalive_time_ms", int(settings.keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),
    ]


class FleetClient:
    def __init__(
        self,
        config: AgentConfig,
        journal: Journal,
        outbox: Outbox,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if config.control_plane is None:
            raise ValueError("FleetClient needs control_plane in the agent config")
        self.config = config
        self.settings = config.control_plane
        self.journal = journal
        self.outbox = outbox
        self.clock = clock or SystemClock()
        self.backoff = backoff or Backoff(
            self.settings.reconnect.initial, self.settings.reconnect.maximum
        )
        self.applier = Applier(config, self.settings, journal, outbox, self.clock)
        self.approvals = DecisionApplier.for_agent(
            config.host_id, self.settings.assignment_keys, journal, outbox, self.clock
        )
        self.pauses = PauseFile(config.pause_path)
        self.stats = ClientStats()
        self.identity = (
            Identity.of(self.settings, config.host_id, config.state_dir)
            if self.settings.tls is not None
            else None
        )
        """This host's certificate (enrolled, renewed); None in insecure mode."""
        self._renewed = False
        self.connected = threading.Event()
        """Set while a stream is open (for tests and status)."""
        self._live = LiveState()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._session: _Session | None = None
        outbox.on_add(self._hint)

    # ---- called from other threads -----------------------------------------------------------

    def start(self) -> None:
        if self.settings.insecure:
            log_event(
                "control_plane_insecure",
                logging.WARNING,
                address=self.settings.address,
                warning="PLAINTEXT gRPC: reports and pauses travel unencrypted and the control "
                "plane is not authenticated at the transport (assignments and bundles are still "
                "signature-checked); use only in a lab until mTLS is configured",
            )
        self._thread = threading.Thread(target=self._run, name="stanch-fleet", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the stream and end the thread (bounded: a daemon thread never holds up exit)."""
        self._stopping.set()
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(event.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def snapshot(self) -> ChannelSnapshot:
        """The channel for metrics (``agent.instrumentation.snapshot_agent``'s ``channel``)."""
        return ChannelSnapshot(
            connected=self.connected.is_set(),
            outbox_depth=self.outbox.depth(),
            outbox_dropped=self.outbox.dropped(),
            last_connected_at=self.stats.last_connected_at,
        )

    def observe(self, live: LiveState) -> None:
        """The main loop's latest snapshot (swapped by reference; read by the heartbeat)."""
        self._live = live

    def _hint(self) -> None:
        """An outbox row was added (any thread): let the reporter look a moment later, after
        the adding transaction has committed."""
        loop, session = self._loop, self._session
        if loop is None or session is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.call_later, 0.05, session.wake.set)

    # ---- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # the boundary: never take the agent down with the channel
            log_event("fleet_client_crashed", logging.ERROR, error=repr(exc))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Two workers for the blocking calls (journal, pause file, verifier): one may wait on a
        # verifier child for seconds while acks keep flowing; each extra thread costs memory.
        self._loop.set_default_executor(ThreadPoolExecutor(2, "stanch-fleet-io"))
        self._stop_event = asyncio.Event()
        if self._stopping.is_set():
            return
        while not self._stop_event.is_set():
            started = time.monotonic()
            session = _Session(asyncio.Queue(), asyncio.Event())
            try:
                await self._run_session(session)
            except (SessionLost, grpc.aio.AioRpcError, OSError, TimeoutError) as exc:
                self.stats.last_error = _describe(exc)
                # Loud once per outage, quiet for each retry during it (a day-long outage at
                # a 60 s cap is 1,440 attempts).
                first = self.backoff.attempt == 0 or session.heard
                log_event(
                    "control_plane_disconnected",
                    logging.WARNING if first else logging.INFO,
                    address=self.settings.address,
                    error=self.stats.last_error,
                    attempt=self.backoff.attempt + 1,
                )
            except Exception as exc:  # a bug in a handler: log it, reconnect, keep going
                self.stats.last_error = repr(exc)
                log_event("fleet_session_error", logging.ERROR, error=repr(exc))
            finally:
                self.connected.clear()
                self._session = None
            if self._stop_event.is_set():
                break
            if session.heard or time.monotonic() - started >= HEALTHY_SESSION:
                self.backoff.reset()
            if self._renewed:  # a new certificate: reconnect with it at once
                self._renewed = False
                continue
            delay = self.backoff.next()
            log_event("control_plane_reconnect", delay=round(delay, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), delay)

    async def _run_session(self, session: _Session) -> None:
        address = self.settings.address
        async with await self._channel() as ch:
            await _connect(ch, CONNECT_TIMEOUT)
            # The generated *_pb2_grpc.py carries no annotations (grpcio-tools writes no .pyi).
            stub = pb_grpc.FleetStub(ch)  # type: ignore[no-untyped-call]
            hello = await asyncio.to_thread(self._hello)
            await session.outgoing.put(hello)
            call = stub.Connect(_drain(session.outgoing))
            self._session = session
            self.stats.sessions += 1
            self.connected.set()
            self.stats.last_connected_at = self.clock.now()
            log_event("control_plane_connected", address=address)
            assignments: asyncio.Queue[bytes] = asyncio.Queue()
            assert self._stop_event is not None
            tasks = [
                asyncio.create_task(self._read(call, session, assignments), name="read"),
                asyncio.create_task(self._heartbeats(session), name="heartbeat"),
                asyncio.create_task(self._report(session), name="report"),
                asyncio.create_task(self._apply(stub, session, assignments), name="apply"),
                asyncio.create_task(self._stop_event.wait(), name="stop"),
            ]
            if self.identity is not None:
                tasks.append(asyncio.create_task(self._renew(ch, self.identity), name="renew"))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                call.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if task.get_name() != "stop" and (exc := task.exception()) is not None:
                    raise exc

    async def _channel(self) -> grpc.aio.Channel:
        """Plaintext in insecure mode; else mTLS with this host's certificate, enrolling
        first when there is none (a failure ends this attempt; the backoff retries)."""
        options: list[tuple[str, Any]] = list(channel_options(self.settings))
        if self.identity is None:
            return grpc.aio.insecure_channel(self.settings.address, options=options)
        try:
            await self.identity.ensure(self.clock.now(), self._enroll)
            credentials = grpc.ssl_channel_credentials(*self.identity.material())
        except EnrollError as exc:
            raise SessionLost(str(exc)) from None
        # A channel of its own (no subchannel shared with the previous session's): after a
        # renewal the next session must handshake again, with the new certificate.
        options += [*self.identity.options(), ("grpc.use_local_subchannel_pool", 1)]
        return grpc.aio.secure_channel(self.settings.address, credentials, options=options)

    async def _enroll(self, token: str, csr: bytes) -> bytes:
        """``Enrollment.Enroll`` on the enrollment port (server-authenticated TLS: the control
        plane is checked against the fleet CA before the token is sent)."""
        identity = self.identity
        assert identity is not None
        ca, _, _ = identity.material(with_cert=False)
        address = identity.enroll_address
        request = pki_pb2.EnrollRequest(token=token, host_id=self.config.host_id, csr_pem=csr)
        creds = grpc.ssl_channel_credentials(ca)
        async with grpc.aio.secure_channel(address, creds, options=identity.options()) as ch:
            stub = pki_pb2_grpc.EnrollmentStub(ch)  # type: ignore[no-untyped-call]
            try:
                answer = await stub.Enroll(request, timeout=ENROLL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                raise EnrollError(f"enrollment at {address} failed: {_describe(exc)}") from None
        return bytes(answer.certificate_pem)

    async def _renew(self, channel: grpc.aio.Channel, identity: Identity) -> None:
        """Sleep until the certificate is due for renewal, renew it over ``channel``, and
        return: the session then ends and the next one connects with the new certificate."""
        stub = pki_pb2_grpc.EnrollmentStub(channel)  # type: ignore[no-untyped-call]

        async def call(csr: bytes) -> bytes:
            answer = await stub.Renew(pki_pb2.RenewRequest(csr_pem=csr), timeout=ENROLL_TIMEOUT)
            return bytes(answer.certificate_pem)

        while True:
            await asyncio.sleep(identity.renew_delay(self.clock.now()))
            try:
                await identity.renew(call)
            except (grpc.aio.AioRpcError, OSError, ValueError) as exc:
                log_event("certificate_renewal_failed", logging.WARNING, error=_describe(exc))
                left = identity.window().not_after - self.clock.now()
                await asyncio.sleep(min(RENEW_RETRY, max(1.0, left / 4)))
                continue
            self._renewed = True
            return

    def _hello(self) -> pb.AgentMessage:
        return wire.hello(
            self.config.host_id,
            self.config.labels,
            __version__,
            read_pointer(self.config.state_dir),
            self.applier.last_seq(),
        )

    # ---- the tasks ---------------------------------------------------------------------------

    async def _read(
        self,
        call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.ControlMessage],
        session: _Session,
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

    async def _heartbeats(self, session: _Session) -> None:
        while True:
            await asyncio.to_thread(self.applier.rejections.scan)
            health = await asyncio.to_thread(self._health)
            await session.outgoing.put(wire.heartbeat(self.clock.now(), health))
            self.stats.heartbeats += 1
            await asyncio.sleep(self.settings.heartbeat)

    def _health(self) -> Health:
        pointer = read_pointer(self.config.state_dir)
        return summarize(self._live, self.journal, self.outbox, pointer, self.clock.now())

    async def _report(self, session: _Session) -> None:
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
        self, stub: pb_grpc.FleetStub, session: _Session, assignments: asyncio.Queue[bytes]
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
        raise FetchError(FETCH_FAILED, f"FetchBundle {digest}: {_describe(exc)}") from None
    finally:
        call.cancel()
    if total is not None and len(data) != total:
        raise FetchError(FETCH_FAILED, f"got {len(data)} of {total} bytes of {digest}")
    return bytes(data)


async def _connect(channel: grpc.aio.Channel, timeout: float) -> None:
    """Wait for READY; fail at once on TRANSIENT_FAILURE so our backoff, not the channel's
    hidden one, decides when to try again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            raise SessionLost(f"cannot connect ({state.name.lower()})")
        left = deadline - loop.time()
        if left <= 0:
            raise SessionLost(f"not connected after {timeout:g}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.wait_for_state_change(state), left)
        state = channel.get_state(try_to_connect=True)


async def _drain(queue: asyncio.Queue[pb.AgentMessage]) -> AsyncIterator[pb.AgentMessage]:
    """The request stream: whatever the tasks queue, in order, for as long as the call lives."""
    while True:
        yield await queue.get()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
