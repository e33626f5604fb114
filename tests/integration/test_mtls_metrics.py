"""Enrollment, renewal and operator authentication in the control plane's ``/metrics``, for
real: mTLS on loopback, enrollments refused for each reason, a renewal, operator calls by token
and by certificate allowed, denied and refused, certificates about to expire; then the HTTP
exposition is scraped and parsed. No series carries a host id, a token id or a name."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cp_harness import Cluster, run
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_enroll import _enroll, _refused, _token

pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")
from test_cp_metrics_http import PROMTOOL, Scrape, promtool_check, scrape  # noqa: E402

from agent.clock import SystemClock  # noqa: E402
from agent.fleet.tls import make_csr, new_key  # noqa: E402
from controlplane.assignments import make_signer  # noqa: E402
from controlplane.bundle_fixtures import KeyRing  # noqa: E402
from controlplane.metrics_server import ServedMetrics  # noqa: E402
from controlplane.pki import init_pki  # noqa: E402
from controlplane.plane import ControlPlane  # noqa: E402
from controlplane.ratelimit import EnrollLimits, Rate  # noqa: E402
from controlplane.server import Server  # noqa: E402
from controlplane.storage.base_pki import CertificateRecord  # noqa: E402
from controlplane.storage.sqlite import SqliteStorage  # noqa: E402
from stanch.v1 import admin_pb2, admin_pb2_grpc, pki_pb2, pki_pb2_grpc  # noqa: E402

DAY = 86400.0
LEGACY = "legacy-shared-secret"
ATTEMPTS = 8
"""Enroll calls the scenario makes before the one the per-peer bucket refuses."""


@dataclass
class MeteredTls(Cluster):
    """``cp_harness.Cluster`` with TLS and ``--metrics-listen 127.0.0.1:0``."""

    async def start(self) -> None:
        self.metrics = ServedMetrics("127.0.0.1", 0)
        self.plane = ControlPlane(
            SqliteStorage(self.tmp / "cp.db"),
            self.ring.trust(1),
            make_signer(self.assign_key),
            SystemClock(),
            self.settings,
            self.metrics,
        )
        self.server = Server(self.plane, f"127.0.0.1:{self.port}", self.token, self.transport())
        self.port = await self.server.start()
        self.enroll_port = self.server.enroll_port
        self.metrics.serve(self.plane, asyncio.get_running_loop())
        assert self.metrics.server is not None
        self.base = f"http://127.0.0.1:{self.metrics.server.port}"
        self.open_admin()

    async def stop(self) -> None:
        await super().stop()
        self.metrics.close()


async def _list_agents(c: Cluster, creds: Any, token: str = "") -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.secure_channel(c.addr, creds) as channel:
        try:
            await admin_pb2_grpc.AdminStub(channel).ListAgents(
                admin_pb2.ListAgentsRequest(), metadata=metadata, timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def _certificates(c: Cluster) -> None:
    """Stored certificates for the expiry gauge: two hosts whose newest one ends within 7 days,
    and every kind that must not count."""
    now = time.time()
    rows = [
        CertificateRecord("a1", "soon-1", now - DAY, now + 2 * DAY, now - DAY),
        CertificateRecord("a2", "soon-2", now - DAY, now + 6 * DAY, now - DAY),
        # renewed: the old certificate ends soon, the newest does not
        CertificateRecord("b1", "renewed-1", now - 9 * DAY, now + 1 * DAY, now - 9 * DAY),
        CertificateRecord("b2", "renewed-1", now - DAY, now + 30 * DAY, now - DAY),
        CertificateRecord("c1", "later-1", now - DAY, now + 8 * DAY, now - DAY),
        CertificateRecord("d1", "expired-1", now - 9 * DAY, now - 60, now - 9 * DAY),
        CertificateRecord("e1", "revoked-1", now - DAY, now + 2 * DAY, now - DAY),
    ]
    db = c.plane.db
    for row in rows:
        await c.plane.store.run(db.add_certificate, row)
    await c.plane.store.run(db.revoke_certificate, "e1", "revoked-1", now, "test")
    await c.plane.store.run(db.revoke_certificate, "f1", "operator:ann", now, "test")


async def _enrollments(c: MeteredTls) -> None:
    """One of each outcome, in :data:`ATTEMPTS` calls, then one over the rate limit."""
    assert (await _enroll(c, await _token(c), "web-1")).serial  # issued
    used = await _token(c)
    await _enroll(c, used, "web-2")  # issued
    refusals = [
        _enroll(c, "not-a-token", "web-3"),  # bad_token (malformed)
        _enroll(c, "0123456789abcdef." + "x" * 30, "web-3"),  # bad_token (unknown)
        _enroll(c, used, "web-3"),  # token_used
        _enroll(c, await _token(c, host="db-1"), "web-3"),  # wrong_host
    ]
    for call in refusals:
        assert (await _refused(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.secure_channel(c.addr, c.operator_credentials()) as channel:
        revoke = pki_pb2.RevokeHostRequest(host_id="web-2", reason="test")
        await pki_pb2_grpc.PkiStub(channel).RevokeHost(revoke, timeout=5)
    revoked = await _refused(_enroll(c, await _token(c, host="web-2"), "web-2"))
    assert revoked.code() == grpc.StatusCode.PERMISSION_DENIED
    bad_csr = pki_pb2.EnrollRequest(
        token=await _token(c), host_id="web-3", csr_pem=make_csr(new_key(), "web-4")
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{c.enroll_port}", c.credentials()) as ch:
        stub = pki_pb2_grpc.EnrollmentStub(ch)
        error = await _refused(stub.Enroll(bad_csr, timeout=5))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # ATTEMPTS so far: the bucket is empty
    limited = await _refused(_enroll(c, await _token(c), "web-5"))
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def _renewals(c: MeteredTls) -> None:
    key, cert, serial = c.issue_host_cert("web-9")
    await c.record_cert("web-9", serial)
    async with grpc.aio.secure_channel(c.addr, c.credentials(cert, key)) as channel:
        stub = pki_pb2_grpc.EnrollmentStub(channel)
        renewed = await stub.Renew(pki_pb2.RenewRequest(csr_pem=make_csr(new_key(), "web-9")))
        assert renewed.serial
        error = await _refused(
            stub.Renew(pki_pb2.RenewRequest(csr_pem=make_csr(new_key(), "db-9")), timeout=5)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with grpc.aio.secure_channel(f"127.0.0.1:{c.enroll_port}", c.credentials()) as ch:
        stub = pki_pb2_grpc.EnrollmentStub(ch)
        error = await _refused(
            stub.Renew(pki_pb2.RenewRequest(csr_pem=make_csr(new_key(), "web-9")), timeout=5)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def _operators(c: MeteredTls) -> None:
    admin = c.operator_credentials("alice", "admin")
    viewer = c.operator_credentials("victor", "viewer")
    key, cert, _ = c.issue_host_cert("web-8")
    as_host = c.credentials(cert, key)
    assert await _list_agents(c, viewer) == grpc.StatusCode.OK
    assert await _list_agents(c, viewer, token=LEGACY) == grpc.StatusCode.OK
    assert await _list_agents(c, admin, token="stk_feed_wrong") == grpc.StatusCode.UNAUTHENTICATED
    assert await _list_agents(c, as_host) == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.secure_channel(c.addr, viewer) as channel:
        error = await _refused(
            pki_pb2_grpc.PkiStub(channel).RevokeHost(
                pki_pb2.RevokeHostRequest(host_id="web-1"), timeout=5
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_enrollment_renewal_and_operator_authentication_in_metrics(tmp_path: Path) -> None:
    async def scenario() -> None:
        c = MeteredTls(tmp_path, KeyRing.generate(1), Ed25519PrivateKey.generate(), LEGACY)
        c.pki = init_pki(tmp_path / "pki", ["localhost", "127.0.0.1"], time.time())
        c.limits = EnrollLimits(per_peer=Rate(per_second=0.001, burst=ATTEMPTS))
        c.cert_lifetime = 30 * DAY  # enrolled hosts are not "expiring soon"
        await c.start()
        try:
            await _certificates(c)
            await _enrollments(c)
            await _renewals(c)
            await _operators(c)
            m = await scrape(c.base)
        finally:
            await c.stop()
        check(m)

    run(scenario())


def check(m: Scrape) -> None:
    name = "stanch_cp_enrollments_total"
    enrolled = {s["result"]: m(name, **s) for s in m.series(name)}
    assert enrolled == {
        "issued": 2,
        "rate_limited": 1,
        "disabled": 0,
        "bad_csr": 1,
        "bad_token": 2,
        "token_used": 1,
        "token_expired": 0,
        "wrong_host": 1,
        "revoked": 1,
        "other": 0,
    }
    renewals = "stanch_cp_certificate_renewals_total"
    assert m(renewals, result="renewed") == 1
    assert m(renewals, result="bad_csr") == 1
    assert m(renewals, result="refused") == 1
    auth = "stanch_cp_operator_authentications_total"
    assert m(auth, method="token", result="ok") == 1  # the legacy token
    assert m(auth, method="token", result="unauthenticated") == 1
    assert m(auth, method="certificate", result="unauthenticated") == 1  # a host's certificate
    assert m(auth, method="certificate", result="permission_denied") == 1
    # 6 enrollment tokens made, 1 host revoked, 1 viewer call
    assert m(auth, method="certificate", result="ok") == 8
    assert m(auth, method="none", result="unauthenticated") == 0
    assert m(auth, method="insecure_dev", result="ok") == 0
    assert m("stanch_cp_host_certificates_expiring_soon") == 2
    # Bounded labels: results and methods only, never a host, token or operator name.
    for name in (auth, renewals, "stanch_cp_enrollments_total"):
        for labels in m.series(name):
            assert set(labels) <= {"result", "method"}, labels
    for host in ("web-1", "web-9", "soon-1", "alice", "victor", "feed"):
        assert host not in m.body, host
    if PROMTOOL:
        promtool_check(m.body)
