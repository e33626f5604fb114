"""Revocation one certificate at a time, over real mTLS on loopback (``cluster(tls=True)``):
an operator certificate works, is revoked by serial (or its operator by name) and the next call
is refused with the fixed message, also when another replica wrote the revocation (within the
cache's TTL); a revoked host, once unrevoked, enrolls again with a new token and connects, while
its old certificate stays refused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cp_harness import Cluster, cluster, run, until

from agent.fleet.tls import key_pem, make_csr, new_key
from controlplane.auth_interceptor import UNAUTHENTICATED
from controlplane.pki_issue import issue_operator
from controlplane.storage.base_pki import UNKNOWN_OPERATOR
from stanch.v1 import admin_pb2, admin_pb2_grpc, pki_pb2, pki_pb2_grpc


def _operator(c: Cluster, name: str, role: str = "admin") -> tuple[Any, str]:
    """Channel credentials for a new operator certificate, and its serial."""
    key, issued = issue_operator(c.authority(), name, role, time.time())
    return c.credentials(issued.pem, key), issued.serial


async def _list_agents(c: Cluster, creds: Any) -> grpc.StatusCode:
    async with grpc.aio.secure_channel(c.addr, creds) as channel:
        try:
            await admin_pb2_grpc.AdminStub(channel).ListAgents(
                admin_pb2.ListAgentsRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() != grpc.StatusCode.UNAUTHENTICATED or exc.details() == UNAUTHENTICATED
            return exc.code()
    return grpc.StatusCode.OK


async def _pki(c: Cluster, method: str, request: Any) -> Any:
    async with grpc.aio.secure_channel(c.addr, c.operator_credentials("root")) as channel:
        return await getattr(pki_pb2_grpc.PkiStub(channel), method)(request, timeout=5)


async def _enroll(c: Cluster, host: str) -> tuple[bytes, bytes, str]:
    """A new token bound to ``host`` and an enrollment with it: (key, certificate, serial)."""
    token = await _pki(
        c, "CreateEnrollmentToken", pki_pb2.CreateEnrollmentTokenRequest(host_id=host)
    )
    key = new_key()
    async with grpc.aio.secure_channel(f"127.0.0.1:{c.enroll_port}", c.credentials()) as ch:
        request = pki_pb2.EnrollRequest(
            token=token.token, host_id=host, csr_pem=make_csr(key, host)
        )
        answer = await pki_pb2_grpc.EnrollmentStub(ch).Enroll(request, timeout=5)
    return key_pem(key), answer.certificate_pem, answer.serial


def test_an_operator_certificate_is_revoked_by_serial_and_refused_next_call(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            alice, serial = _operator(c, "alice", "viewer")
            spare, _ = _operator(c, "alice", "viewer")  # another of alice's, not revoked
            assert await _list_agents(c, alice) == grpc.StatusCode.OK
            async with grpc.aio.secure_channel(c.addr, alice) as channel:
                as_viewer = pki_pb2_grpc.PkiStub(channel)
                for call in (
                    as_viewer.RevokeCertificate(
                        pki_pb2.RevokeCertificateRequest(operator="root"), timeout=5
                    ),
                    as_viewer.UnrevokeHost(pki_pb2.UnrevokeHostRequest(host_id="x"), timeout=5),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as denied:
                        await call
                    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            answer = await _pki(
                c,
                "RevokeCertificate",
                pki_pb2.RevokeCertificateRequest(serial=serial.upper(), reason="laptop lost"),
            )
            assert (answer.serial, answer.subject) == (serial, UNKNOWN_OPERATOR)
            assert answer.newly_revoked
            # this replica wrote it: refused at once, with the fixed message
            assert await _list_agents(c, alice) == grpc.StatusCode.UNAUTHENTICATED
            assert await _list_agents(c, spare) == grpc.StatusCode.OK
            again = await _pki(
                c, "RevokeCertificate", pki_pb2.RevokeCertificateRequest(serial=serial)
            )
            assert not again.newly_revoked
            listed = await _pki(c, "ListCertificates", pki_pb2.ListCertificatesRequest())
            assert [(x.serial, x.reason) for x in listed.certificates if x.revoked_at] == [
                (serial, "laptop lost")
            ]
            audit = await c.plane.audit.entries(action="certificate.revoke")
            assert [(e.actor, e.result) for e in audit] == [
                ("alice", "PERMISSION_DENIED"),
                ("root", "ok"),
                ("root", "ok"),
            ]

    run(scenario())


def test_a_revoked_operator_name_cuts_its_older_certificates_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            old, _ = _operator(c, "bob")
            assert await _list_agents(c, old) == grpc.StatusCode.OK
            answer = await _pki(
                c, "RevokeCertificate", pki_pb2.RevokeCertificateRequest(operator="bob")
            )
            assert answer.operator == "bob" and answer.subject == "operator:bob"
            assert await _list_agents(c, old) == grpc.StatusCode.UNAUTHENTICATED
            # the backdating of a new certificate is undone: issued a second later, it works
            await asyncio.sleep(1.1)
            fresh, _ = _operator(c, "bob")
            assert await _list_agents(c, fresh) == grpc.StatusCode.OK
            listed = await _pki(c, "ListRevokedHosts", pki_pb2.ListRevokedHostsRequest())
            assert [h.host_id for h in listed.hosts] == ["operator:bob"]

    run(scenario())


def test_another_replicas_revocation_is_seen_within_the_ttl(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            c.plane.auth.revocations.ttl = 0.3
            carol, serial = _operator(c, "carol")
            assert await _list_agents(c, carol) == grpc.StatusCode.OK
            # written straight to storage, as another replica on the same database would
            db = c.plane.db
            await c.plane.store.run(db.revoke_certificate, serial, UNKNOWN_OPERATOR, 1.0, "")
            started = time.monotonic()
            while await _list_agents(c, carol) == grpc.StatusCode.OK:
                assert time.monotonic() - started < 3.0, "the revocation was never seen"
            assert time.monotonic() - started < 0.3 + 1.0

    run(scenario())


def test_an_unrevoked_host_enrolls_again_and_its_old_certificate_stays_refused(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            key1, cert1, serial1 = await _enroll(c, "web-1")
            first = await c.agent("web-1", credentials=c.credentials(cert1, key1))
            await until(lambda: c.plane.connections.hosts() == ["web-1"], 5, "web-1 connected")
            revoke = pki_pb2.RevokeHostRequest(host_id="web-1", reason="rebuild")
            assert (await _pki(c, "RevokeHost", revoke)).disconnected
            await until(lambda: first.ended, 5, "the stream cut")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _enroll(c, "web-1")  # revoked: no new certificate
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

            lifted = await _pki(c, "UnrevokeHost", pki_pb2.UnrevokeHostRequest(host_id="web-1"))
            assert lifted.host_id == "web-1"
            with pytest.raises(grpc.aio.AioRpcError) as twice:
                await _pki(c, "UnrevokeHost", pki_pb2.UnrevokeHostRequest(host_id="web-1"))
            assert twice.value.code() == grpc.StatusCode.NOT_FOUND
            listed = await _pki(c, "ListRevokedHosts", pki_pb2.ListRevokedHostsRequest())
            assert list(listed.hosts) == []

            key2, cert2, serial2 = await _enroll(c, "web-1")
            assert serial2 != serial1
            second = await c.agent("web-1", credentials=c.credentials(cert2, key2))
            await until(lambda: c.plane.connections.hosts() == ["web-1"], 5, "web-1 back")
            stale = await c.agent("web-1", credentials=c.credentials(cert1, key1))
            assert await until(lambda: stale.ended, 5, "the old cert refused")
            assert stale.ended == grpc.StatusCode.PERMISSION_DENIED
            assert second.ended is None
            audit = await c.plane.audit.entries(action="host.unrevoke")
            assert [(e.actor, e.target, e.result) for e in audit] == [
                ("root", "host_id=web-1", "ok"),
                ("root", "host_id=web-1", "NOT_FOUND"),
            ]

    run(scenario())
