"""The Admin API's approval methods, ``ListApprovals`` and ``DecideApproval``: a mixin of
``AdminService`` that only delegates to ``controlplane.approvals`` (as the web console does).

Roles (``controlplane.roles``): listing needs ``viewer``; deciding needs ``operator``, and the
auth interceptor audits it as a mutating call. Who decided is the authenticated principal, never
a name the caller typed: see :func:`actor`.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import grpc

from controlplane import approvals
from controlplane.approvals import DecideResult, PendingApproval
from controlplane.plane import ControlPlane
from controlplane.status_codes import api_errors
from stanch.v1 import admin_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def actor(requested_by: str) -> str:
    """The name a decision is recorded under.

    ADAPTER (auth): ``controlplane.auth.actor`` names the authenticated principal of the call
    (set by the auth interceptor) and ignores what the request claims. Until that module is in
    the tree, the request's ``by`` (what ``opsctl`` fills in) is all there is. Imported by name
    so this module works before and after it lands; once it has, replace this function with
    ``from controlplane.auth import actor``.
    """
    try:
        auth = importlib.import_module("controlplane.auth")
    except ImportError:
        return requested_by or "unknown"
    return str(auth.actor(requested_by)) or "unknown"


def approval_info(p: PendingApproval) -> admin_pb2.ApprovalInfo:
    return admin_pb2.ApprovalInfo(
        host_id=p.host_id,
        approval_id=p.approval_id,
        policy=p.policy,
        created_at=p.created_at,
        expires_at=p.expires_at,
        message=p.message,
        observed_json=json.dumps(dict(p.observed), sort_keys=True, default=str),
        connected=p.connected,
    )


def decide_response(r: DecideResult) -> admin_pb2.DecideApprovalResponse:
    return admin_pb2.DecideApprovalResponse(
        host_id=r.host_id,
        approval_id=r.approval_id,
        policy=r.policy,
        decision=r.decision,
        by=r.by,
        nonce=r.nonce,
        issued_at=r.issued_at,
        expires_at=r.expires_at,
        confirmed=r.confirmed,
        outcome=r.outcome,
        message=r.message,
    )


class ApprovalsAdmin:
    plane: ControlPlane

    @api_errors
    async def ListApprovals(  # noqa: N802 (the gRPC method name)
        self, request: admin_pb2.ListApprovalsRequest, context: Context
    ) -> admin_pb2.ListApprovalsResponse:
        found = [
            p
            for p in await approvals.pending(self.plane)
            if request.host in ("", p.host_id) and request.policy in ("", p.policy)
        ]
        return admin_pb2.ListApprovalsResponse(approvals=[approval_info(p) for p in found])

    @api_errors
    async def DecideApproval(  # noqa: N802 (the gRPC method name)
        self, request: admin_pb2.DecideApprovalRequest, context: Context
    ) -> admin_pb2.DecideApprovalResponse:
        result = await approvals.decide(
            self.plane,
            request.host,
            request.policy,
            request.approve,
            actor(request.by),
            request.ttl_seconds or None,
            reason=request.reason,
        )
        return decide_response(result)
