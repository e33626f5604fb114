"""The ``stanch.v1.Enrollment`` servicer: how a host gets, and keeps, its client certificate.

``Enroll`` is the one agent call that needs no certificate, so it is built for strangers: each
attempt is rate limited (per source address and overall) before any work; the CSR is checked
before the token is spent; the token is checked and marked used in one transaction. Every
refusal is logged with its reason, and the caller only ever hears "enrollment refused". Each
outcome is counted by a fixed reason (``controlplane.security_events``), never by host or token.

``Renew`` runs on the mTLS port: the caller's verified certificate names the host, and the new
certificate is for that host only (the CSR's CN must repeat it).
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

from controlplane import identity
from controlplane.pki import Authority, Issued
from controlplane.pki_issue import (
    HOST_LIFETIME,
    CsrRefused,
    check_csr,
    issue_host,
    split_token,
)
from controlplane.plane import ControlPlane
from controlplane.ratelimit import EnrollLimiter, peer_address
from controlplane.security_events import TOKEN_CHECKS
from controlplane.storage.base_pki import CertificateRecord
from stanch.v1 import pki_pb2, pki_pb2_grpc

log = logging.getLogger("stanch.cp.enroll")
Context = grpc.aio.ServicerContext[Any, Any]
REFUSED = "enrollment refused; ask an operator for a new token"
THROTTLED = "too many enrollment attempts; retry later"
DISABLED = "enrollment is not enabled on this control plane (it needs the CA key: --pki-dir)"


class EnrollmentService(pki_pb2_grpc.EnrollmentServicer):
    def __init__(
        self,
        plane: ControlPlane,
        ca: Authority | None,
        limiter: EnrollLimiter,
        lifetime: float = HOST_LIFETIME,
    ) -> None:
        self.plane = plane
        self.ca = ca
        self.limiter = limiter
        self.lifetime = lifetime
        self.events = plane.auth.events

    async def Enroll(  # noqa: N802 (the gRPC method name)
        self, request: pki_pb2.EnrollRequest, context: Context
    ) -> pki_pb2.EnrollResponse:
        plane, peer, host = self.plane, context.peer(), request.host_id[:253]
        if not self.limiter.allow(peer_address(peer)):
            log.warning("enrollment from %s for host %r: rate limited", peer, host)
            self.events.enrolled("rate_limited")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, THROTTLED)
        if self.ca is None:
            self.events.enrolled("disabled")
            await context.abort(grpc.StatusCode.UNAVAILABLE, DISABLED)
        now = plane.clock.now()
        try:
            check_csr(request.csr_pem, host)  # before the token is spent; nothing signed yet
        except CsrRefused as exc:
            await self._refuse(context, host, str(exc), "bad_csr")
        parsed = split_token(request.token)
        if parsed is None:
            await self._refuse(context, host, "malformed token", "bad_token")
        if await plane.store.run(plane.db.revoked_host, host) is not None:
            await self._refuse(context, host, "host is revoked", "revoked")
        check = await plane.store.run(plane.db.consume_enrollment_token, *parsed, host, now)
        if check != "ok":
            why = TOKEN_CHECKS.get(check, "other")
            await self._refuse(context, host, f"token {parsed[0]}: {check}", why)
        issued = issue_host(self.ca, request.csr_pem, host, now, self.lifetime)
        await self._record(host, issued, now)
        self.events.enrolled("issued")
        log.info(
            "host %s enrolled from %s with token %s: certificate %s",
            host,
            peer,
            parsed[0],
            issued.serial,
        )
        return self._response(issued)

    async def Renew(  # noqa: N802 (the gRPC method name)
        self, request: pki_pb2.RenewRequest, context: Context
    ) -> pki_pb2.EnrollResponse:
        try:
            host = await identity.admit(self.plane, context, None, "Renew")
        except Exception:  # admit aborts: no host certificate, or a revoked host/certificate
            self.events.renewed("refused")
            raise
        if not host:
            self.events.renewed("refused")
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "renewal needs the mTLS port")
        if self.ca is None:
            self.events.renewed("disabled")
            await context.abort(grpc.StatusCode.UNAVAILABLE, DISABLED)
        now = self.plane.clock.now()
        try:
            issued = issue_host(self.ca, request.csr_pem, host, now, self.lifetime)
        except CsrRefused as exc:
            log.warning("renewal refused for host %s from %s: %s", host, context.peer(), exc)
            self.events.renewed("bad_csr")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "renewal refused")
        await self._record(host, issued, now)
        self.events.renewed("renewed")
        log.info("host %s renewed: certificate %s", host, issued.serial)
        return self._response(issued)

    async def _refuse(self, context: Context, host: str, reason: str, result: str) -> NoReturn:
        log.warning("enrollment refused from %s for host %r: %s", context.peer(), host, reason)
        self.events.enrolled(result)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, REFUSED)

    async def _record(self, host: str, issued: Issued, now: float) -> None:
        record = CertificateRecord(issued.serial, host, issued.not_before, issued.not_after, now)
        await self.plane.store.run(self.plane.db.add_certificate, record)

    def _response(self, issued: Issued) -> pki_pb2.EnrollResponse:
        assert self.ca is not None
        return pki_pb2.EnrollResponse(
            certificate_pem=issued.pem,
            ca_pem=self.ca.cert_pem,
            serial=issued.serial,
            not_before=issued.not_before,
            not_after=issued.not_after,
        )
