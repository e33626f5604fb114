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
from concurrent.futures import ThreadPoolExecutor

import grpc.aio

from agent import __version__
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig
from agent.fleet import wire
from agent.fleet.apply import Applier
from agent.fleet.approval import DecisionApplier
from agent.fleet.backoff import Backoff
from agent.fleet.client_channel import CONNECT_TIMEOUT, ChannelSetup, SessionLost, connect, describe
from agent.fleet.client_session import ClientStats, Session, SessionTasks, drain
from agent.fleet.enroll import Identity
from agent.fleet.health import LiveState, read_pointer
from agent.fleet.outbox import Outbox
from agent.instrumentation import ChannelSnapshot
from agent.journal import Journal
from agent.logs import log_event
from agent.pauses import PauseFile
from stanch.v1 import fleet_pb2 as pb
from stanch.v1 import fleet_pb2_grpc as pb_grpc

HEALTHY_SESSION = 10.0
"""A session that lasted this long, or heard anything from the server, resets the backoff."""


class FleetClient(SessionTasks, ChannelSetup):
    """The stream's lifecycle (see this module's docstring). The session's tasks are in
    ``agent.fleet.client_session``; its channel and certificate in
    ``agent.fleet.client_channel``."""

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
        self._session: Session | None = None
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
            session = Session(asyncio.Queue(), asyncio.Event())
            try:
                await self._run_session(session)
            except (SessionLost, grpc.aio.AioRpcError, OSError, TimeoutError) as exc:
                self.stats.last_error = describe(exc)
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

    async def _run_session(self, session: Session) -> None:
        address = self.settings.address
        async with await self._channel() as ch:
            await connect(ch, CONNECT_TIMEOUT)
            # The generated *_pb2_grpc.py carries no annotations (grpcio-tools writes no .pyi).
            stub = pb_grpc.FleetStub(ch)  # type: ignore[no-untyped-call]
            hello = await asyncio.to_thread(self._hello)
            await session.outgoing.put(hello)
            call = stub.Connect(drain(session.outgoing))
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

    def _hello(self) -> pb.AgentMessage:
        return wire.hello(
            self.config.host_id,
            self.config.labels,
            __version__,
            read_pointer(self.config.state_dir),
            self.applier.last_seq(),
        )
