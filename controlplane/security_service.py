"""The ``stanch.v1.Security`` servicer: API tokens and the audit log. Each method only delegates.

Roles are checked, and token changes audited, by ``controlplane.auth_interceptor``; here the
creator of a token is the authenticated principal, never a name from the request.
"""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.audit import Anchor, VerifyResult
from controlplane.auth import actor
from controlplane.errors import InvalidRequest, NotFound
from controlplane.plane import ControlPlane
from controlplane.status_codes import api_errors
from controlplane.storage.base_auth import ApiTokenRecord, AuditEntry
from stanch.v1 import security_pb2, security_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_LIMIT = 200
MAX_LIMIT = 10_000


def token_info(t: ApiTokenRecord) -> security_pb2.TokenInfo:
    return security_pb2.TokenInfo(
        id=t.id,
        name=t.name,
        role=t.role,
        created_at=t.created_at,
        expires_at=t.expires_at,
        revoked_at=t.revoked_at,
        created_by=t.created_by,
        last_used_at=t.last_used_at,
    )


def audit_entry(e: AuditEntry) -> security_pb2.AuditEntry:
    return security_pb2.AuditEntry(
        seq=e.seq,
        at=e.at,
        actor=e.actor,
        role=e.role,
        via=e.via,
        action=e.action,
        target=e.target,
        source=e.source,
        result=e.result,
        detail_json=e.detail,
        prev_hash=e.prev_hash,
        hash=e.hash,
    )


def verify_response(r: VerifyResult) -> security_pb2.VerifyAuditResponse:
    return security_pb2.VerifyAuditResponse(
        ok=r.ok,
        checked=r.checked,
        first_bad_seq=r.first_bad_seq,
        problem=r.problem,
        head_hash=r.head_hash,
        head_seq=r.head_seq,
        anchor_checked=r.anchor_checked,
    )


class SecurityService(security_pb2_grpc.SecurityServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.auth = plane.auth
        self.audit = plane.audit

    @api_errors
    async def CreateToken(  # noqa: N802
        self, request: security_pb2.CreateTokenRequest, context: Context
    ) -> security_pb2.CreateTokenResponse:
        token, record = await self.auth.create(
            request.name, request.role, request.expires_in_seconds, actor()
        )
        return security_pb2.CreateTokenResponse(info=token_info(record), token=token)

    @api_errors
    async def ListTokens(  # noqa: N802
        self, request: security_pb2.ListTokensRequest, context: Context
    ) -> security_pb2.ListTokensResponse:
        tokens = await self.auth.tokens(request.include_inactive)
        return security_pb2.ListTokensResponse(tokens=[token_info(t) for t in tokens])

    @api_errors
    async def RevokeToken(  # noqa: N802
        self, request: security_pb2.RevokeTokenRequest, context: Context
    ) -> security_pb2.TokenInfo:
        revoked = await self.auth.revoke(request.id)
        if revoked is None:
            raise NotFound(f"token {request.id[:24]!r}: no such token; see 'opsctl tokens list'")
        return token_info(revoked)

    @api_errors
    async def SetTokenRole(  # noqa: N802
        self, request: security_pb2.SetTokenRoleRequest, context: Context
    ) -> security_pb2.SetTokenRoleResponse:
        change = await self.auth.set_role(request.id, request.role)
        return security_pb2.SetTokenRoleResponse(
            info=token_info(change.token), old_role=change.old_role
        )

    @api_errors
    async def ListAudit(  # noqa: N802
        self, request: security_pb2.ListAuditRequest, context: Context
    ) -> security_pb2.ListAuditResponse:
        limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
        found = await self.audit.entries(request.since, request.actor, request.action, limit)
        return security_pb2.ListAuditResponse(entries=[audit_entry(e) for e in found])

    @api_errors
    async def VerifyAudit(  # noqa: N802
        self, request: security_pb2.VerifyAuditRequest, context: Context
    ) -> security_pb2.VerifyAuditResponse:
        anchor = None
        if request.anchor:
            try:
                anchor = Anchor.parse(request.anchor)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
        return verify_response(await self.audit.verify(anchor))
