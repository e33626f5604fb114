"""Harness for control-plane tests: the real server on loopback port 0, simulated agents.

- ``cluster``: a real :class:`ControlPlane` (real SQLite in ``tmp_path``, real Ed25519 keys) behind
  the real gRPC server, in the test's event loop, with fast timings. ``restart()`` stops it and
  starts a new one on the same database and port, as a process restart would.
- ``SimAgent``: an agent reduced to its protocol, written with grpc.aio stubs: Hello, heartbeats,
  report batches, apply results. It verifies each assignment with the agent's own code
  (``agent.fleet.assignment``) and lets the test decide whether the bundle "applies" (a bad
  bundle is one the test says is refused or makes remediations fail).
- ``until``: the one way a test waits; bounded, and says what it waited for when it gives up.
- TLS (``cluster(..., tls=True)``): a fleet CA made by ``init_pki`` in ``tmp_path``, the server on
  mTLS plus its enrollment port; ``host_credentials`` issues a host certificate (recorded as an
  enrollment would), and the operator's Admin channel uses an admin operator certificate.

Tests are plain functions that call ``asyncio.run`` (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.keys import key_id
from agent.clock import SystemClock
from agent.fleet.assignment import Assignment, AssignmentRejected, verify_assignment
from agent.fleet.tls import key_pem, make_csr, new_key
from controlplane.assignments import make_signer
from controlplane.bundle_fixtures import KeyRing, make_bundle, policy_text, write_source
from controlplane.pki import Authority, PkiPaths, init_pki
from controlplane.pki_issue import issue_host, issue_operator
from controlplane.plane import ControlPlane, Settings
from controlplane.ratelimit import EnrollLimits
from controlplane.server import Server
from controlplane.storage.base_pki import CertificateRecord
from controlplane.storage.sqlite import SqliteStorage
from controlplane.storm import StormSettings
from controlplane.transport import Tls
from stanch.v1 import admin_pb2, admin_pb2_grpc, fleet_pb2, fleet_pb2_grpc

FAST = Settings(
    lost_after=5.0,
    apply_timeout=5.0,
    storm=StormSettings(fraction=0.3, window=60.0, min_hosts=3, pause_for=600.0),
    tick=0.05,
    presence_interval=0.1,
    storm_interval=0.05,
    hello_timeout=2.0,
    holder="test",
)
Verdict = Callable[[Assignment], tuple[bool, str]]


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


def applies(_: Assignment) -> tuple[bool, str]:
    return True, ""


@dataclass
class SimAgent:
    addr: str
    host_id: str
    labels: Mapping[str, str]
    keys: Mapping[str, Any]
    digest: str = ""
    version: int = 0
    last_seq: int = 0
    verdict: Verdict = applies
    accepted: list[Assignment] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    pauses: dict[str, fleet_pb2.FleetPause] = field(default_factory=dict)
    resumes: list[str] = field(default_factory=list)
    ended: grpc.StatusCode | None = None
    credentials: grpc.ChannelCredentials | None = None
    """TLS (a host certificate, or none for a stranger); None is plaintext."""

    async def connect(self) -> SimAgent:
        self.ended = None
        if self.credentials is None:
            self._channel = grpc.aio.insecure_channel(self.addr)
        else:
            self._channel = grpc.aio.secure_channel(self.addr, self.credentials)
        stub = fleet_pb2_grpc.FleetStub(self._channel)
        self._out: asyncio.Queue[fleet_pb2.AgentMessage | None] = asyncio.Queue()
        self._call = stub.Connect(self._outgoing())
        hello = fleet_pb2.Hello(
            host_id=self.host_id,
            labels=dict(self.labels),
            agent_version="sim-1",
            bundle_digest=self.digest,
            bundle_version=self.version,
            last_assignment_seq=self.last_seq,
        )
        await self._out.put(fleet_pb2.AgentMessage(hello=hello))
        self._reader = asyncio.create_task(self._read())
        return self

    async def _outgoing(self) -> AsyncIterator[fleet_pb2.AgentMessage]:
        while (message := await self._out.get()) is not None:
            yield message

    async def _read(self) -> None:
        try:
            async for message in self._call:
                await self._handle(message)
        except grpc.aio.AioRpcError as exc:
            self.ended = exc.code()
        else:
            self.ended = grpc.StatusCode.OK

    async def _handle(self, message: fleet_pb2.ControlMessage) -> None:
        kind = message.WhichOneof("body")
        if kind == "ack":
            self.acks.extend(message.ack.report_ids)
        elif kind == "pause":
            self.pauses[message.pause.scope] = message.pause
        elif kind == "resume":
            self.pauses.pop(message.resume.scope, None)
            self.resumes.append(message.resume.scope)
        elif kind == "assignment":
            try:
                a = verify_assignment(
                    message.assignment.envelope, self.keys, self.host_id, self.last_seq
                )
            except AssignmentRejected as exc:
                self.refused.append(exc.reason)
                return
            ok, reason = self.verdict(a)
            self.accepted.append(a)
            self.last_seq = a.seq
            if ok:
                self.digest, self.version = a.bundle_digest, a.bundle_version
            result = fleet_pb2.ApplyResult(
                assignment_seq=a.seq, bundle_digest=a.bundle_digest, applied=ok, reason=reason
            )
            await self.send(fleet_pb2.AgentMessage(apply_result=result))

    async def send(self, message: fleet_pb2.AgentMessage) -> None:
        await self._out.put(message)

    async def heartbeat(self, firing: Sequence[str] = ()) -> None:
        health = fleet_pb2.HealthSummary(
            policies=3, firing=len(firing), firing_policies=list(firing)
        )
        beat = fleet_pb2.Heartbeat(at=time.time(), health=health)
        await self.send(fleet_pb2.AgentMessage(heartbeat=beat))

    async def report(self, *reports: fleet_pb2.Report) -> None:
        batch = fleet_pb2.ReportBatch(reports=list(reports))
        await self.send(fleet_pb2.AgentMessage(reports=batch))

    async def close(self) -> None:
        await self._out.put(None)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._channel.close()

    @property
    def on(self) -> str:
        return self.digest


def execution(
    report_id: int, policy: str, outcome: str, at: float | None = None, **body: Any
) -> fleet_pb2.Report:
    at = time.time() if at is None else at
    doc = {"started_at": at - 3, "finished_at": at, "status": outcome, **body}
    return fleet_pb2.Report(
        id=report_id,
        kind="execution",
        policy=policy,
        at=at,
        outcome=outcome,
        reason="verification",
        body_json=json.dumps(doc),
    )


@dataclass
class Operator:
    """What a test does from the outside: talk to the Admin API, run simulated agents."""

    tmp: Path
    ring: KeyRing
    assign_key: Ed25519PrivateKey
    token: str | None = None
    port: int = 0
    agents: list[SimAgent] = field(default_factory=list)
    pki: PkiPaths | None = None
    """The fleet CA when the control plane serves TLS."""
    enroll_port: int = 0

    @property
    def ca_pem(self) -> bytes:
        assert self.pki is not None, "a TLS cluster (tls=True)"
        return self.pki.ca_cert.read_bytes()

    def authority(self) -> Authority:
        assert self.pki is not None, "a TLS cluster (tls=True)"
        return Authority.load(self.pki.ca_cert, self.pki.ca_key)

    def credentials(self, cert: bytes | None = None, key: bytes | None = None) -> Any:
        """Channel credentials trusting the fleet CA, with this client certificate if any."""
        return grpc.ssl_channel_credentials(self.ca_pem, key, cert)

    def issue_host_cert(self, host: str, lifetime: float = 3600.0) -> tuple[bytes, bytes, str]:
        """``(key PEM, certificate PEM, serial)`` for ``host``, signed by the fleet CA."""
        key = new_key()
        issued = issue_host(self.authority(), make_csr(key, host), host, time.time(), lifetime)
        return key_pem(key), issued.pem, issued.serial

    def operator_credentials(self, name: str = "test-admin", role: str = "admin") -> Any:
        key, issued = issue_operator(self.authority(), name, role, time.time())
        return self.credentials(issued.pem, key)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def assign_keys(self) -> dict[str, Any]:
        public = self.assign_key.public_key()
        return {key_id(public): public}

    def open_admin(self) -> None:
        if self.pki is None:
            self._admin_channel = grpc.aio.insecure_channel(self.addr)
        else:
            self._admin_channel = grpc.aio.secure_channel(self.addr, self.operator_credentials())
        self._admin = admin_pb2_grpc.AdminStub(self._admin_channel)
        self._metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()

    async def close_agents(self) -> None:
        for agent in self.agents:
            await agent.close()

    async def admin(self, method: str, request: Any) -> Any:
        return await getattr(self._admin, method)(request, metadata=self._metadata, timeout=10)

    async def agent(
        self, host: str, labels: Mapping[str, str] | None = None, **kw: Any
    ) -> SimAgent:
        if self.pki is not None and "credentials" not in kw:
            key, cert, _ = self.issue_host_cert(host)
            kw["credentials"] = self.credentials(cert, key)
        sim = SimAgent(self.addr, host, labels or {"env": "prod"}, self.assign_keys, **kw)
        self.agents.append(sim)
        return await sim.connect()

    def bundle(self, version: int = 1, name: str = "web", minutes: float = 0.0) -> bytes:
        text = policy_text("heartbeat") + (f"  manual_minutes: {minutes:g}\n" if minutes else "")
        source = write_source(self.tmp / f"src-{name}-{version}", {"heartbeat.yaml": text})
        built = make_bundle(
            source, self.ring, [0], name=name, version=version, created=time.time() - 60
        )
        return built.data

    async def publish(self, data: bytes) -> admin_pb2.BundleInfo:
        return await self.admin("PublishBundle", admin_pb2.PublishBundleRequest(data=data))

    async def rollout(
        self,
        digest: str,
        waves: Sequence[str] = ("1", "50%", "100%"),
        bake: float = 0.3,
        **kw: Any,
    ) -> admin_pb2.RolloutStatus:
        request = admin_pb2.StartRolloutRequest(
            bundle=digest,
            selector=kw.pop("selector", {"env": "prod"}),
            waves=list(waves),
            bake_seconds=bake,
            by="test",
            **kw,
        )
        return await self.admin("StartRollout", request)

    async def status(self, rollout_id: str = "") -> admin_pb2.RolloutStatus:
        return await self.admin("GetRollout", admin_pb2.GetRolloutRequest(id=rollout_id))


@dataclass
class Cluster(Operator):
    """The control plane in this process and event loop, with fast timings."""

    settings: Settings = FAST
    limits: EnrollLimits = EnrollLimits()
    cert_lifetime: float = 7 * 86400.0

    def transport(self) -> Tls | None:
        if self.pki is None:
            return None
        return Tls(
            cert_chain=self.pki.server_cert.read_bytes(),
            key=self.pki.server_key.read_bytes(),
            client_ca=self.ca_pem,
            enroll_listen=f"127.0.0.1:{self.enroll_port}",
            ca=self.authority(),
            limits=self.limits,
            cert_lifetime=self.cert_lifetime,
        )

    async def record_cert(self, host: str, serial: str) -> None:
        """Record an issued certificate as enrollment does (revocation by serial sees it)."""
        now = time.time()
        record = CertificateRecord(serial, host, now - 300, now + 3600, now)
        await self.plane.store.run(self.plane.db.add_certificate, record)

    async def start(self) -> None:
        self.plane = ControlPlane(
            SqliteStorage(self.tmp / "cp.db"),
            self.ring.trust(1),
            make_signer(self.assign_key),
            SystemClock(),
            self.settings,
        )
        self.server = Server(self.plane, f"127.0.0.1:{self.port}", self.token, self.transport())
        self.port = await self.server.start()
        self.enroll_port = self.server.enroll_port
        self.open_admin()

    async def stop(self) -> None:
        await self.close_agents()
        await self._admin_channel.close()
        await self.server.stop(0.5)


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path,
    settings: Settings = FAST,
    token: str | None = None,
    tls: bool = False,
    limits: EnrollLimits | None = None,
    cert_lifetime: float | None = None,
) -> AsyncIterator[Cluster]:
    c = Cluster(
        tmp_path, KeyRing.generate(1), Ed25519PrivateKey.generate(), token, settings=settings
    )
    if tls:
        c.pki = init_pki(tmp_path / "pki", ["localhost", "127.0.0.1"], time.time())
    if limits is not None:
        c.limits = limits
    if cert_lifetime is not None:
        c.cert_lifetime = cert_lifetime
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))
