"""mTLS on the agent channel, on loopback with the real control plane (``cluster(tls=True)``):
strangers are refused, a host cannot act as another, a revoked host is cut off at once, and a
flood of bad connections does not stop a good agent or an operator."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cp_harness import Cluster, SimAgent, cluster, execution, run, until

from agent.fleet.tls import key_pem, make_csr, new_key
from controlplane.pki import Authority
from controlplane.pki_issue import issue_host
from controlplane.storage.base import ReportQuery
from stanch.v1 import admin_pb2, fleet_pb2, fleet_pb2_grpc, pki_pb2, pki_pb2_grpc


async def _ended(agent: object) -> grpc.StatusCode:
    return await until(lambda: getattr(agent, "ended"), 5, "the stream to end")  # noqa: B009


async def _fetch(c: Cluster, addr: str, creds: grpc.ChannelCredentials, digest: str) -> int:
    async with grpc.aio.secure_channel(addr, creds) as channel:
        stub = fleet_pb2_grpc.FleetStub(channel)
        chunks = [
            chunk
            async for chunk in stub.FetchBundle(
                fleet_pb2.FetchBundleRequest(digest=digest), timeout=5
            )
        ]
    return sum(len(chunk.data) for chunk in chunks)


def test_a_stranger_without_a_certificate_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            # mTLS port: the handshake itself fails without a client certificate.
            stranger = await c.agent("web-1", credentials=c.credentials())
            assert await _ended(stranger) == grpc.StatusCode.UNAVAILABLE
            # A certificate from another CA fails the handshake too.
            other = Authority.create(time.time())
            key = new_key()
            forged = issue_host(other, make_csr(key, "web-1"), "web-1", time.time())
            impostor = await c.agent("web-1", credentials=c.credentials(forged.pem, key_pem(key)))
            assert await _ended(impostor) == grpc.StatusCode.UNAVAILABLE
            # Enrollment port: TLS without a client certificate, so no host identity at all.
            enroll_addr = f"127.0.0.1:{c.enroll_port}"
            on_enroll_port = SimAgent(
                enroll_addr, "web-1", {"env": "prod"}, c.assign_keys, credentials=c.credentials()
            )
            c.agents.append(await on_enroll_port.connect())
            assert await _ended(on_enroll_port) == grpc.StatusCode.UNAUTHENTICATED
            # An operator's certificate is not a host's.
            operator = await c.agent("web-1", credentials=c.operator_credentials("eve", "admin"))
            assert await _ended(operator) == grpc.StatusCode.UNAUTHENTICATED
            assert c.plane.connections.hosts() == []
            agents = await c.admin("ListAgents", admin_pb2.ListAgentsRequest())
            assert list(agents.agents) == []

    run(scenario())


def test_a_host_cannot_hello_report_or_fetch_as_another_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "stanch.cp")

    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            key, cert, _ = c.issue_host_cert("web-a")
            as_a = c.credentials(cert, key)
            liar = await c.agent("web-b", credentials=as_a)
            assert await _ended(liar) == grpc.StatusCode.PERMISSION_DENIED
            assert c.plane.connections.hosts() == []
            honest = await c.agent("web-a", credentials=as_a)
            await until(lambda: c.plane.connections.hosts() == ["web-a"], 5, "web-a connected")
            # A second Hello naming B on A's stream changes nothing: reports stay A's.
            hello = fleet_pb2.Hello(host_id="web-b", labels={"env": "prod"})
            await honest.send(fleet_pb2.AgentMessage(hello=hello))
            await honest.report(execution(1, "nginx", "fixed"))
            await until(lambda: 1 in honest.acks, 5, "the report acked")
            stored = await c.plane.store.run(c.plane.db.reports, ReportQuery(since=0))
            assert [(r.host_id, r.id) for r in stored] == [("web-a", 1)]
            assert c.plane.connections.hosts() == ["web-a"]
            # Fetch needs a host certificate: A's works, none is refused.
            digest = (await c.publish(c.bundle())).digest
            assert await _fetch(c, c.addr, as_a, digest) > 0
            enroll_addr = f"127.0.0.1:{c.enroll_port}"
            try:
                await _fetch(c, enroll_addr, c.credentials(), digest)
                raise AssertionError("FetchBundle without a certificate was served")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED

    run(scenario())
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("certificate of host 'web-a' claimed host 'web-b'" in m for m in refusals)
    assert any("FetchBundle refused" in m and "no host certificate" in m for m in refusals)


def test_a_revoked_host_is_cut_off_at_once_and_refused_on_reconnect(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            key, cert, serial = c.issue_host_cert("web-1")
            await c.record_cert("web-1", serial)
            creds = c.credentials(cert, key)
            first = await c.agent("web-1", credentials=creds)
            other = await c.agent("web-2")
            await until(lambda: len(c.plane.connections) == 2, 5, "two agents connected")
            async with grpc.aio.secure_channel(c.addr, c.operator_credentials()) as channel:
                pki = pki_pb2_grpc.PkiStub(channel)
                started = time.monotonic()
                answer = await pki.RevokeHost(
                    pki_pb2.RevokeHostRequest(host_id="web-1", reason="stolen", by="test"),
                    timeout=5,
                )
                assert answer.disconnected and answer.certificates_revoked == 1
                await _ended(first)
                assert time.monotonic() - started < 2.0
                revoked = await pki.ListRevokedHosts(pki_pb2.ListRevokedHostsRequest(), timeout=5)
                assert [(h.host_id, h.reason) for h in revoked.hosts] == [("web-1", "stolen")]
            again = await c.agent("web-1", credentials=creds)
            assert await _ended(again) == grpc.StatusCode.PERMISSION_DENIED
            assert c.plane.connections.hosts() == ["web-2"]
            assert other.ended is None
            digest = (await c.publish(c.bundle())).digest
            try:
                await _fetch(c, c.addr, creds, digest)
                raise AssertionError("a revoked host fetched a bundle")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED

    run(scenario())


FLOOD = 300


async def _bad_connection(port: int, kind: int) -> asyncio.StreamWriter | None:
    """One bad connection, left open: silent TCP, garbage bytes, or a TLS handshake without a
    client certificate (refused on the mTLS port; on the enrollment port, followed by junk)."""
    if kind == 2:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            await asyncio.wait_for(reader.read(100), 5)
        except (ssl.SSLError, OSError, TimeoutError):
            return None  # refused: that is the point
        return writer
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if kind == 1:
        writer.write(b"\x16\x03\x01 not a handshake " * 20)
    return writer


def test_a_flood_of_bad_connections_is_survived(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            started = time.monotonic()
            flood = await asyncio.wait_for(
                asyncio.gather(
                    *(_bad_connection((c.port, c.enroll_port)[n % 2], n % 3) for n in range(FLOOD)),
                    return_exceptions=True,
                ),
                60,
            )
            try:
                # The bad connections are still open: a good agent and an operator get in.
                agent = await c.agent("web-1")
                await until(lambda: c.plane.connections.hosts() == ["web-1"], 10, "web-1 in")
                agents = await c.admin("ListAgents", admin_pb2.ListAgentsRequest())
                assert [a.host_id for a in agents.agents] == ["web-1"]
                assert agent.ended is None
                assert time.monotonic() - started < 30
                held = [w for w in flood if isinstance(w, asyncio.StreamWriter)]
                assert len(held) >= FLOOD // 2  # the flood was real, and still there
            finally:
                for writer in flood:
                    if isinstance(writer, asyncio.StreamWriter):
                        writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))
