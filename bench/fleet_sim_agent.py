"""Simulated agents for one worker process: the real ``stanch.v1.Fleet`` protocol, no host work.

A :class:`SimAgent` is an agent reduced to its stream, written like ``agent/fleet/client.py``:
``Hello`` first, a heartbeat with a ``HealthSummary`` every ``heartbeat`` seconds, report
batches whose ids the control plane acks once they are durable, and an ``ApplyResult`` for every
``SignedAssignment`` (``applied=True`` with the digest it was sent; the envelope is parsed, not
verified: the signature check is the agent's cost, not the control plane's). The bundle is fetched
once per digest per process (``FetchBundle``), as many agents on one host would share a cache.

Right after ``Hello`` an agent sends an *empty* ``ReportBatch``: the control plane acks it only
after it has registered the stream (stored the agent, sent its assignment, asked the rollout
driver), so that first ack is the moment the control plane counts the agent as connected.

:class:`SimProcess` holds the agents of one process. Heartbeats and reports are driven by two
process-wide tickers (one task each, every 100 ms) rather than a task per agent; each agent has
one reader task per session. Agents share ``agents_per_channel`` per grpc.aio channel; each channel
gets its own subchannel pool, so ``agents_per_channel=1`` is one TCP connection per agent, as a
real fleet is. Counters go to a shared array the parent process reads (see ``fleet_sim``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from agent.bundle.dsse import Envelope
from stanch.v1 import fleet_pb2 as pb
from stanch.v1 import fleet_pb2_grpc as pb_grpc

TICK = 0.1
CONNECTED, SESSIONS, HEARTBEATS, REPORTS_SENT, REPORTS_ACKED = 0, 1, 2, 3, 4
ASSIGNMENTS, APPLIED, FETCHES, ERRORS, DISCONNECTS = 5, 6, 7, 8, 9
COUNTERS = (
    "connected",
    "sessions",
    "heartbeats",
    "reports_sent",
    "reports_acked",
    "assignments",
    "applied",
    "fetches",
    "errors",
    "disconnects",
)
FIRST_ACK_TIMEOUT = 60.0
SATURATE = -1.0
"""Report rate meaning "every connected agent keeps its window of batches full"."""
BODY = json.dumps({"status": "cleared", "checks": {"beat": {"age_seconds": 3.2}}, "sim": True})


@dataclass(frozen=True)
class SimConfig:
    address: str
    agents: int
    """Agents in this process."""
    first: int = 0
    """Index of this process's first agent (host ids are ``{prefix}-{index:06d}``)."""
    prefix: str = "sim"
    agents_per_channel: int = 1
    heartbeat: float = 10.0
    report_batch: int = 10
    window_batches: int = 4
    connect_concurrency: int = 200
    """Streams being opened at once in this process (the rest wait their turn)."""
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    fetch_bundles: bool = True
    zones: int = 4
    roles: tuple[str, ...] = ("web", "db", "cache")
    pki_dir: str = ""
    """mTLS: the ``opsctl pki init`` directory (CA certificate and key). Each agent gets its own
    P-256 key and a host certificate signed here, as enrollment would give it; "" = plaintext."""

    def labels(self, index: int) -> dict[str, str]:
        return {
            "env": "prod",
            "zone": f"z{index % self.zones}",
            "role": self.roles[index % len(self.roles)],
        }


@dataclass
class Control:
    """What the parent can change while the fleet runs (read every tick)."""

    report_rate: float = 0.0
    """Reports per second for this whole process; :data:`SATURATE` for as fast as acked."""
    stop: bool = False


def channel_options(unique: int) -> list[tuple[str, int]]:
    # A local subchannel pool: channels with equal arguments would otherwise share one TCP
    # connection (grpc's global pool), and the control plane would see one peer, not thousands.
    return [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),
        # Shared channels: grpc's own reconnect backoff (up to 120 s) must not outlast ours.
        ("grpc.initial_reconnect_backoff_ms", 1000),
        ("grpc.max_reconnect_backoff_ms", 10_000),
        ("stanch.sim.channel", unique),
    ]


@dataclass
class SimAgent:
    host_id: str
    labels: dict[str, str]
    proc: SimProcess
    channel_index: int
    digest: str = ""
    version: int = 0
    last_seq: int = 0
    next_id: int = 1
    connected: bool = False
    phase: str = "new"
    inflight: dict[int, pb.Report] = field(default_factory=dict)
    resend: list[pb.Report] = field(default_factory=list)
    call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.ControlMessage] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self) -> None:
        attempt = 0
        rng = self.proc.rng
        while not self.proc.control.stop:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                self._lost()
                raise
            except grpc.aio.AioRpcError as exc:
                self.proc.ended[f"{exc.code().name}: {(exc.details() or '')[:60]}"] += 1
            except Exception as exc:  # a stream that failed oddly is a lost stream too
                self.proc.ended[type(exc).__name__] += 1
                self.proc.counters[ERRORS] += 1
            self._lost()
            if self.proc.control.stop:
                return
            self.proc.renew(self.channel_index)
            if time.monotonic() - started > 10.0:
                attempt = 0
            window = min(
                self.proc.config.backoff_max, self.proc.config.backoff_initial * 2**attempt
            )
            attempt += 1
            self.phase = "backoff"
            await asyncio.sleep(window / 2 + rng.uniform(0, window / 2))

    async def _session(self) -> None:
        hello = pb.Hello(
            host_id=self.host_id,
            labels=self.labels,
            agent_version="sim-1",
            bundle_digest=self.digest,
            bundle_version=self.version,
            last_assignment_seq=self.last_seq,
        )
        self.phase = "slot"
        # Bounded streams being opened; the call starts only once Hello can follow at once
        # (the control plane gives a stream ``hello_timeout`` to say Hello, then ends it).
        async with self.proc.connecting:
            self.phase = "hello"
            self.call = call = self.proc.stub(self.channel_index).Connect()
            self.proc.counters[SESSIONS] += 1
            await self._write(pb.AgentMessage(hello=hello))
            await self._write(pb.AgentMessage(reports=pb.ReportBatch()))
            self.phase = "first-ack"
            first = await asyncio.wait_for(call.read(), FIRST_ACK_TIMEOUT)
            if first is grpc.aio.EOF:
                return
            self.connected = True
            self.phase = "connected"
            self.proc.counters[CONNECTED] += 1
            await self._handle(first)
        if self.resend:
            rows, self.resend = self.resend, []
            await self.send_reports(rows)
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            await self._handle(message)

    def _lost(self) -> None:
        if self.call is not None:
            self.call.cancel()
            self.call = None
        if self.connected:
            self.connected = False
            self.proc.counters[CONNECTED] -= 1
            self.proc.counters[DISCONNECTS] += 1
        # Unacked reports go again on the next stream; the control plane deduplicates by id.
        self.resend = sorted([*self.resend, *self.inflight.values()], key=lambda r: r.id)
        self.inflight.clear()

    async def _write(self, message: pb.AgentMessage) -> None:
        call = self.call
        if call is None:
            return
        async with self.lock:  # grpc.aio allows one write at a time per call
            await call.write(message)

    async def send(self, message: pb.AgentMessage) -> bool:
        try:
            await self._write(message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return False
        return True

    async def _handle(self, message: pb.ControlMessage) -> None:
        kind = message.WhichOneof("body")
        counters = self.proc.counters
        if kind == "ack":
            acked = 0
            for report_id in message.ack.report_ids:
                if self.inflight.pop(report_id, None) is not None:
                    acked += 1
            counters[REPORTS_ACKED] += acked
            if acked and self.proc.control.report_rate == SATURATE:
                await self.fill_window()
        elif kind == "assignment":
            counters[ASSIGNMENTS] += 1
            await self._apply(message.assignment.envelope)

    async def _apply(self, envelope: bytes) -> None:
        doc = json.loads(Envelope.from_json(envelope).payload)
        digest, seq = str(doc["bundle_digest"]), int(doc["seq"])
        if seq <= self.last_seq:
            return
        if self.proc.config.fetch_bundles:
            await self.proc.fetch(self.channel_index, digest)
        self.digest, self.version, self.last_seq = digest, int(doc["bundle_version"]), seq
        result = pb.ApplyResult(assignment_seq=seq, bundle_digest=digest, applied=True)
        if await self.send(pb.AgentMessage(apply_result=result)):
            self.proc.counters[APPLIED] += 1

    def room(self) -> int:
        return self.proc.config.report_batch * self.proc.config.window_batches - len(self.inflight)

    def new_reports(self, count: int) -> list[pb.Report]:
        now = time.time()
        rows = [
            pb.Report(
                id=self.next_id + i,
                kind="decision",
                policy="heartbeat",
                at=now,
                outcome="cleared",
                reason="rule",
                body_json=BODY,
            )
            for i in range(count)
        ]
        self.next_id += count
        return rows

    async def send_reports(self, rows: Sequence[pb.Report]) -> None:
        batch = self.proc.config.report_batch
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            for r in chunk:
                self.inflight[r.id] = r
            if not await self.send(pb.AgentMessage(reports=pb.ReportBatch(reports=chunk))):
                return
            self.proc.counters[REPORTS_SENT] += len(chunk)

    async def fill_window(self) -> None:
        room = self.room()
        batch = self.proc.config.report_batch
        if self.connected and room >= batch:
            await self.send_reports(self.new_reports(room - room % batch))

    async def heartbeat(self) -> None:
        health = pb.HealthSummary(policies=3, outbox_depth=len(self.inflight))
        beat = pb.Heartbeat(at=time.time(), health=health)
        if await self.send(pb.AgentMessage(heartbeat=beat)):
            self.proc.counters[HEARTBEATS] += 1


class SimProcess:
    """The agents of one process, their channels, and the two tickers that drive them."""

    def __init__(
        self, config: SimConfig, counters: MutableSequence[int], control: Control, seed: int = 0
    ) -> None:
        self.config = config
        self.counters = counters
        self.control = control
        self.rng = random.Random(seed or config.first + 1)
        self.connecting = asyncio.Semaphore(config.connect_concurrency)
        channels = -(-config.agents // config.agents_per_channel)
        self._credentials: list[grpc.ChannelCredentials] = []
        if config.pki_dir:
            if config.agents_per_channel != 1:
                raise ValueError("fleet_sim: with mTLS a channel is one host: agents_per_channel=1")
            self._credentials = host_credentials(
                Path(config.pki_dir),
                [f"{config.prefix}-{config.first + i:06d}" for i in range(channels)],
            )
        self.channels = [self._open(i) for i in range(channels)]
        self._stubs = [pb_grpc.FleetStub(ch) for ch in self.channels]  # type: ignore[no-untyped-call]
        self.agents = [
            SimAgent(
                f"{config.prefix}-{config.first + i:06d}",
                config.labels(config.first + i),
                self,
                i // config.agents_per_channel,
            )
            for i in range(config.agents)
        ]
        self._bundles: dict[str, asyncio.Task[int]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.ended: collections.Counter[str] = collections.Counter()
        """Why sessions ended: status code or exception name -> count."""

    def renew(self, index: int) -> None:
        """After a lost stream: a fresh channel when it is the agent's own (as the real agent
        opens one per session), so grpc's hidden reconnect backoff never adds to ours."""
        if self.config.agents_per_channel != 1:
            return
        old = self.channels[index]
        self.channels[index] = self._open(index)
        self._stubs[index] = pb_grpc.FleetStub(self.channels[index])  # type: ignore[no-untyped-call]
        task = asyncio.create_task(old.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _open(self, index: int) -> grpc.aio.Channel:
        options = channel_options(self.config.first + index)
        if self._credentials:
            return grpc.aio.secure_channel(self.config.address, self._credentials[index], options)
        return grpc.aio.insecure_channel(self.config.address, options=options)

    def stub(self, index: int) -> pb_grpc.FleetStub:
        return self._stubs[index]

    async def fetch(self, channel_index: int, digest: str) -> None:
        """Download ``digest`` once for this process; later callers wait for the same task."""
        task = self._bundles.get(digest)
        if task is None:
            task = asyncio.create_task(self._download(channel_index, digest))
            self._bundles[digest] = task
        try:
            await task
        except grpc.aio.AioRpcError:
            self._bundles.pop(digest, None)
            self.counters[ERRORS] += 1

    async def _download(self, channel_index: int, digest: str) -> int:
        size = 0
        call = self.stub(channel_index).FetchBundle(
            pb.FetchBundleRequest(digest=digest), timeout=60
        )
        async for chunk in call:
            size += len(chunk.data)
        self.counters[FETCHES] += 1
        return size

    def phases(self) -> dict[str, dict[str, int]]:
        """Agents per session phase, and why sessions ended (SIGUSR1 prints it: a stuck fleet)."""
        return {
            "phases": dict(collections.Counter(a.phase for a in self.agents)),
            "ended": dict(self.ended),
        }

    async def run(self) -> None:
        tasks = [asyncio.create_task(a.run()) for a in self.agents]
        tasks.append(asyncio.create_task(self._heartbeats()))
        tasks.append(asyncio.create_task(self._reports()))
        try:
            while not self.control.stop:
                await asyncio.sleep(TICK)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for ch in self.channels:
                with contextlib.suppress(Exception):
                    await ch.close()

    async def _heartbeats(self) -> None:
        """Each agent beats once per ``heartbeat``, spread over the period (slot = index)."""
        slots = max(1, round(self.config.heartbeat / TICK))
        tick = 0
        while True:
            due = [a for a in self.agents[tick % slots :: slots] if a.connected]
            if due:
                await asyncio.gather(*(a.heartbeat() for a in due))
            tick += 1
            await asyncio.sleep(TICK)

    async def _reports(self) -> None:
        """Open-loop reports at ``control.report_rate`` per second, round-robin over agents
        with room in their window (closed loop in :data:`SATURATE` mode: acks refill)."""
        budget, cursor = 0.0, 0
        batch = self.config.report_batch
        while True:
            await asyncio.sleep(TICK)
            rate = self.control.report_rate
            if rate == SATURATE:
                idle = [a for a in self.agents if a.connected and not a.inflight]
                await asyncio.gather(*(a.fill_window() for a in idle))
                continue
            budget = min(budget + rate * TICK, max(rate, batch))
            sends = []
            tried = 0
            while budget >= batch and tried < len(self.agents):
                agent = self.agents[cursor % len(self.agents)]
                cursor += 1
                tried += 1
                if agent.connected and agent.room() >= batch:
                    sends.append(agent.send_reports(agent.new_reports(batch)))
                    budget -= batch
            if sends:
                await asyncio.gather(*sends)


def host_credentials(pki_dir: Path, host_ids: Sequence[str]) -> list[grpc.ChannelCredentials]:
    """A key and a host certificate (CN and SAN URI = host id) per host, signed by the CA in
    ``pki_dir``: what enrollment would hand each agent, made here without the round trip."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from agent.fleet.tls import host_uri, key_pem, new_key
    from controlplane.pki import Authority, PkiPaths

    paths = PkiPaths(pki_dir)
    ca = Authority.load(paths.ca_cert, paths.ca_key)
    root = paths.ca_cert.read_bytes()
    now = time.time()
    out = []
    for host in host_ids:
        key = new_key()
        issued = ca.sign(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]),
            key.public_key(),
            [x509.UniformResourceIdentifier(host_uri(host))],
            ExtendedKeyUsageOID.CLIENT_AUTH,
            now,
            86400.0,
        )
        out.append(grpc.ssl_channel_credentials(root, key_pem(key), issued.pem))
    return out
