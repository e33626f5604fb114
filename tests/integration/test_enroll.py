"""Enrollment and renewal over real TLS on loopback: a bootstrap token and a CSR buy a host
certificate once; reused, expired, wrong or misdirected tokens are refused with one generic
message (the reason is only logged); attempts are rate limited; renewal is for the same host."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cp_harness import Cluster, cluster, run, until
from cryptography import x509

from agent.fleet.tls import key_pem, make_csr, new_key
from controlplane.enroll_service import REFUSED
from controlplane.ratelimit import EnrollLimits, Rate
from stanch.v1 import pki_pb2, pki_pb2_grpc


async def _token(c: Cluster, host: str = "", ttl: float = 0.0) -> str:
    async with grpc.aio.secure_channel(c.addr, c.operator_credentials()) as channel:
        request = pki_pb2.CreateEnrollmentTokenRequest(host_id=host, ttl_seconds=ttl, by="test")
        answer = await pki_pb2_grpc.PkiStub(channel).CreateEnrollmentToken(request, timeout=5)
    return str(answer.token)


async def _enroll(c: Cluster, token: str, host: str, key: Any = None) -> pki_pb2.EnrollResponse:
    key = key or new_key()
    async with grpc.aio.secure_channel(f"127.0.0.1:{c.enroll_port}", c.credentials()) as ch:
        request = pki_pb2.EnrollRequest(token=token, host_id=host, csr_pem=make_csr(key, host))
        return await pki_pb2_grpc.EnrollmentStub(ch).Enroll(request, timeout=5)


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def test_a_token_and_a_csr_enroll_a_host_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "stanch.cp")

    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            token = await _token(c, ttl=600)
            key = new_key()
            got = await _enroll(c, token, "web-1", key)
            cert = x509.load_pem_x509_certificate(got.certificate_pem)
            assert cert.public_key() == key.public_key() and got.ca_pem == c.ca_pem
            assert got.not_after - got.not_before == pytest.approx(7 * 86400 + 300)
            agent = await c.agent(
                "web-1", credentials=c.credentials(got.certificate_pem, key_pem(key))
            )
            await until(lambda: c.plane.connections.hosts() == ["web-1"], 5, "web-1 in")
            assert agent.ended is None
            stored = await c.plane.store.run(c.plane.db.certificates, "web-1")
            assert [s.serial for s in stored] == [got.serial]
            # Single use: the same token again, for the same or another host.
            for host in ("web-1", "web-2"):
                error = await _refused(_enroll(c, token, host))
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                assert error.details() == REFUSED
            assert await c.plane.store.run(c.plane.db.certificates, "web-2") == []

    run(scenario())
    refusals = [r.getMessage() for r in caplog.records if "enrollment refused" in r.getMessage()]
    assert len(refusals) == 2 and all(": used" in m for m in refusals)


def test_wrong_expired_malformed_and_misdirected_tokens_are_refused_alike(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "stanch.cp")

    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            good = await _token(c, ttl=600)
            wrong = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
            short = await _token(c, ttl=0.2)
            bound = await _token(c, host="db-1", ttl=600)
            await asyncio.sleep(0.3)
            cases = [
                (wrong, "web-1"),
                (short, "web-1"),
                ("not-a-token", "web-1"),
                (bound, "web-1"),
                (good, "bad host id!"),
            ]
            for token, host in cases:
                error = await _refused(_enroll(c, token, host))
                assert (error.code(), error.details()) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    REFUSED,
                ), (token, host)
            # None of those spent the good token, nor the bound one for its own host.
            assert (await _enroll(c, good, "web-1")).serial
            assert (await _enroll(c, bound, "db-1")).serial
            # An unbound token cannot take over web-1, which now holds a live certificate.
            error = await _refused(_enroll(c, await _token(c), "web-1"))
            assert error.details() == REFUSED

    run(scenario())
    logged = " ".join(r.getMessage() for r in caplog.records)
    for reason in ("wrong_secret", "expired", "malformed token", "wrong_host", "not valid"):
        assert reason in logged, reason


def test_enrollment_attempts_are_rate_limited(tmp_path: Path) -> None:
    limits = EnrollLimits(per_peer=Rate(per_second=0.01, burst=3), overall=Rate(100, 100))

    async def scenario() -> None:
        async with cluster(tmp_path, tls=True, limits=limits) as c:
            codes = []
            for _ in range(5):
                error = await _refused(_enroll(c, "f" * 16 + "." + "x" * 30, "web-1"))
                codes.append(error.code())
            assert (
                codes
                == [grpc.StatusCode.PERMISSION_DENIED] * 3
                + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
            )
            # Limited before any work: even a good token waits for the bucket.
            token = await _token(c, ttl=600)
            error = await _refused(_enroll(c, token, "web-1"))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    run(scenario())


def test_renewal_is_for_the_certificate_holder_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            key = new_key()
            first = await _enroll(c, await _token(c), "web-1", key)
            creds = c.credentials(first.certificate_pem, key_pem(key))
            async with grpc.aio.secure_channel(c.addr, creds) as channel:
                stub = pki_pb2_grpc.EnrollmentStub(channel)
                fresh = new_key()
                renewed = await stub.Renew(
                    pki_pb2.RenewRequest(csr_pem=make_csr(fresh, "web-1")), timeout=5
                )
                cert = x509.load_pem_x509_certificate(renewed.certificate_pem)
                assert cert.public_key() == fresh.public_key()
                assert renewed.serial != first.serial
                error = await _refused(
                    stub.Renew(pki_pb2.RenewRequest(csr_pem=make_csr(new_key(), "db-1")), timeout=5)
                )
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            # Without a certificate (the enrollment port) there is nothing to renew.
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{c.enroll_port}", c.credentials()
            ) as channel:
                stub = pki_pb2_grpc.EnrollmentStub(channel)
                error = await _refused(
                    stub.Renew(
                        pki_pb2.RenewRequest(csr_pem=make_csr(new_key(), "web-1")), timeout=5
                    )
                )
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            stored = await c.plane.store.run(c.plane.db.certificates, "web-1")
            assert {s.serial for s in stored} == {first.serial, renewed.serial}
            # The renewed certificate connects.
            agent = await c.agent(
                "web-1", credentials=c.credentials(renewed.certificate_pem, key_pem(fresh))
            )
            await until(lambda: c.plane.connections.hosts() == ["web-1"], 5, "web-1 in")
            assert agent.ended is None

    run(scenario())
