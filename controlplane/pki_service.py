"""The ``stanch.v1.Pki`` servicer: enrollment tokens, revocation, and what was issued.

Operator-facing and admin-only (the auth interceptor checks the role before these run).
Revoking a host records it, marks its certificates revoked, and closes its live stream at once:
the agent's reconnect is then refused by ``identity.admit``. Lifting that (``UnrevokeHost``)
leaves its old certificates revoked: the host enrolls again with a fresh token.
``RevokeCertificate`` revokes one serial (operator certificates are issued offline, so the
serial may be new to the table) or an operator name; the auth interceptor refuses both
(``controlplane.pki_revocation``), on this replica at once and on the others within seconds.
A host certificate's serial also closes the live stream opened with it, on this replica
(``Connections.cut_certificate``); its reconnect is refused by ``identity.admit``.

Both close only this replica's streams, at once. A host streaming to another replica (several
on one PostgreSQL) is cut by that replica's revocation sweep (``controlplane.revocation_sweep``,
run by every replica's delivery pass) within about 5 s.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import grpc

from controlplane.auth import actor
from controlplane.errors import InvalidRequest, NotFound
from controlplane.pki_issue import new_token, valid_host_id
from controlplane.plane import ControlPlane
from controlplane.status_codes import api_errors
from controlplane.storage.base_pki import (
    OPERATOR_SUBJECT,
    UNKNOWN_OPERATOR,
    EnrollmentTokenRecord,
)
from stanch.v1 import pki_pb2, pki_pb2_grpc

log = logging.getLogger("stanch.cp.pki")
Context = grpc.aio.ServicerContext[Any, Any]
TOKEN_TTL = 3600.0
MAX_TOKEN_TTL = 7 * 86400.0
SERIAL = re.compile(r"[0-9a-f]{1,40}")


def normal_serial(text: str) -> str:
    """Lower-case hex without leading zeros, as stored; accepts ``0x``, colons and capitals."""
    hexa = text.strip().lower().replace(":", "").removeprefix("0x")
    if not SERIAL.fullmatch(hexa) or int(hexa, 16) == 0:
        raise InvalidRequest(
            f"serial {text[:80]!r}: not a certificate serial; give the hex that"
            " `opsctl pki issue-operator` or `opsctl pki certs -o json` printed"
        )
    return format(int(hexa, 16), "x")


class PkiService(pki_pb2_grpc.PkiServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.run = plane.store.run

    @api_errors
    async def CreateEnrollmentToken(  # noqa: N802
        self, request: pki_pb2.CreateEnrollmentTokenRequest, context: Context
    ) -> pki_pb2.EnrollmentToken:
        host = request.host_id
        if host and not valid_host_id(host):
            raise InvalidRequest(f"host id {host[:80]!r}: letters, digits, '.', '_' and '-' only")
        ttl = request.ttl_seconds or TOKEN_TTL
        if not 0 < ttl <= MAX_TOKEN_TTL:
            raise InvalidRequest(f"ttl {ttl:g}s: between 1s and {MAX_TOKEN_TTL:g}s (7 days)")
        now = self.plane.clock.now()
        token = new_token()
        by = actor(request.by)
        record = EnrollmentTokenRecord(
            token.id, token.secret_hash, host, now, now + ttl, created_by=by
        )
        await self.run(self.plane.db.add_enrollment_token, record)
        log.info("enrollment token %s created by %r for %s", token.id, by, host or "any")
        return pki_pb2.EnrollmentToken(
            token=token.text, id=token.id, host_id=host, expires_at=record.expires_at
        )

    @api_errors
    async def RevokeHost(  # noqa: N802
        self, request: pki_pb2.RevokeHostRequest, context: Context
    ) -> pki_pb2.RevokeHostResponse:
        host = request.host_id
        if not valid_host_id(host):
            raise InvalidRequest(f"host id {host[:80]!r} is not valid")
        now = self.plane.clock.now()
        by = actor(request.by)
        count = await self.run(self.plane.db.revoke_host, host, now, by, request.reason)
        conn = self.plane.connections.get(host)
        if conn is not None:
            conn.close()  # the stream ends now; its reconnect is refused
        log.warning(
            "host %s revoked by %r (%s): %d certificates, live stream %s",
            host,
            by,
            request.reason,
            count,
            "cut" if conn is not None else "none",
        )
        return pki_pb2.RevokeHostResponse(
            host_id=host, certificates_revoked=count, disconnected=conn is not None
        )

    @api_errors
    async def ListCertificates(  # noqa: N802
        self, request: pki_pb2.ListCertificatesRequest, context: Context
    ) -> pki_pb2.CertificateList:
        found = await self.run(self.plane.db.certificates, request.host_id)
        return pki_pb2.CertificateList(
            certificates=[
                pki_pb2.CertificateInfo(
                    serial=c.serial,
                    host_id=c.host_id,
                    not_before=c.not_before,
                    not_after=c.not_after,
                    issued_at=c.issued_at,
                    revoked_at=c.revoked_at,
                    reason=c.reason,
                )
                for c in found
            ]
        )

    @api_errors
    async def ListRevokedHosts(  # noqa: N802
        self, request: pki_pb2.ListRevokedHostsRequest, context: Context
    ) -> pki_pb2.RevokedHostList:
        found = await self.run(self.plane.db.revoked_hosts)
        return pki_pb2.RevokedHostList(
            hosts=[
                pki_pb2.RevokedHostInfo(
                    host_id=h.host_id,
                    at=h.at,
                    revoked_by=h.revoked_by,
                    reason=h.reason,
                )
                for h in found
            ]
        )

    @api_errors
    async def RevokeCertificate(  # noqa: N802
        self, request: pki_pb2.RevokeCertificateRequest, context: Context
    ) -> pki_pb2.RevokeCertificateResponse:
        if bool(request.serial) == bool(request.operator):
            raise InvalidRequest("revoke: give a certificate serial or an operator name (one)")
        now = self.plane.clock.now()
        by = actor(request.by)
        db = self.plane.db
        if request.operator:
            name = request.operator
            if not valid_host_id(name):
                raise InvalidRequest(f"operator name {name[:80]!r} is not valid")
            await self.run(db.revoke_operator, name, now, by, request.reason)
            self.plane.auth.revocations.invalidate()
            log.warning("operator %r revoked by %r (%s)", name, by, request.reason)
            return pki_pb2.RevokeCertificateResponse(
                operator=name, subject=f"operator:{name}", newly_revoked=True
            )
        serial = normal_serial(request.serial)
        fresh = await self.run(db.revoke_certificate, serial, UNKNOWN_OPERATOR, now, request.reason)
        self.plane.auth.revocations.invalidate()
        record = await self.run(db.certificate, serial)
        subject = record.host_id if record is not None else UNKNOWN_OPERATOR
        host = "" if subject.startswith(OPERATOR_SUBJECT) else subject
        cut = self.plane.connections.cut_certificate(serial, host)
        log.warning(
            "certificate %s (%s) revoked by %r (%s): live streams cut: %s",
            serial,
            subject,
            by,
            request.reason,
            ", ".join(cut) or "none",
        )
        return pki_pb2.RevokeCertificateResponse(
            serial=serial, subject=subject, newly_revoked=fresh
        )

    @api_errors
    async def UnrevokeHost(  # noqa: N802
        self, request: pki_pb2.UnrevokeHostRequest, context: Context
    ) -> pki_pb2.UnrevokeHostResponse:
        host = request.host_id
        if not valid_host_id(host):
            raise InvalidRequest(f"host id {host[:80]!r} is not valid")
        if not await self.run(self.plane.db.unrevoke_host, host):
            raise NotFound(f"host {host!r}: not revoked; `opsctl pki revoked` lists who is")
        log.warning("host %s unrevoked by %r: it must enroll again", host, actor(request.by))
        return pki_pb2.UnrevokeHostResponse(host_id=host)
