"""Operator roles over real gRPC on loopback against a real control plane: tokens (viewer,
operator, admin; expired; revoked; none), operator certificates over mTLS, insecure-dev mode,
and the audit entries every mutating call leaves (denied ones included)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cp_harness import Cluster, cluster, run

from controlplane.auth_interceptor import DENIED, UNAUTHENTICATED
from stanch.v1 import admin_pb2, admin_pb2_grpc, security_pb2, security_pb2_grpc


class Caller:
    """One operator's channel: a token (or none) and optional TLS credentials."""

    def __init__(self, c: Cluster, token: str | None, credentials: Any = None) -> None:
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(c.addr)
        else:
            self.channel = grpc.aio.secure_channel(c.addr, credentials)
        self.admin_stub = admin_pb2_grpc.AdminStub(self.channel)
        self.security_stub = security_pb2_grpc.SecurityStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def admin(self, method: str, request: Any) -> Any:
        call = getattr(self.admin_stub, method)
        return await call(request, metadata=self.metadata, timeout=10)

    async def security(self, method: str, request: Any) -> Any:
        call = getattr(self.security_stub, method)
        return await call(request, metadata=self.metadata, timeout=10)

    async def refused(self, service: str, method: str, request: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await getattr(self, service)(method, request)
        code = info.value.code()
        expected = {grpc.StatusCode.UNAUTHENTICATED: UNAUTHENTICATED}.get(code, DENIED)
        assert info.value.details() == expected  # fixed text: nothing about why
        return code


@asynccontextmanager
async def callers(c: Cluster, *tokens: str | None) -> AsyncIterator[list[Caller]]:
    made = [Caller(c, t) for t in tokens]
    try:
        yield made
    finally:
        for caller in made:
            await caller.channel.close()


async def token(admin: Caller, name: str, role: str, expires: float = 0.0) -> str:
    request = security_pb2.CreateTokenRequest(name=name, role=role, expires_in_seconds=expires)
    response = await admin.security("CreateToken", request)
    assert response.token.startswith(f"stk_{response.info.id}_")
    text: str = response.token
    return text


def start_request(digest: str, by: str = "mallory") -> admin_pb2.StartRolloutRequest:
    return admin_pb2.StartRolloutRequest(
        bundle=digest, selector={"env": "prod"}, waves=["100%"], bake_seconds=0.0, by=by
    )


def test_roles_expiry_revocation_and_the_audit_trail(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            root, _ = await c.plane.auth.create("root", "admin", 0.0, "bootstrap")
            async with callers(c, root, None) as (admin, anonymous):
                viewer_t = await token(admin, "vera", "viewer")
                operator_t = await token(admin, "otto", "operator")
                short_t = await token(admin, "brief", "operator", expires=0.3)
                async with callers(c, viewer_t, operator_t, short_t) as (viewer, operator, brief):
                    bundle = admin_pb2.PublishBundleRequest(data=c.bundle(1))
                    # No token: refused, even for reads, once a token exists.
                    code = await anonymous.refused(
                        "admin", "ListRollouts", admin_pb2.ListRolloutsRequest()
                    )
                    assert code == grpc.StatusCode.UNAUTHENTICATED
                    # A viewer reads but cannot publish or start a rollout.
                    assert (
                        await viewer.admin("ListRollouts", admin_pb2.ListRolloutsRequest())
                    ).rollouts == []
                    code = await viewer.refused("admin", "PublishBundle", bundle)
                    assert code == grpc.StatusCode.PERMISSION_DENIED
                    # An operator publishes, starts a rollout, pauses; cannot mint tokens.
                    info = await operator.admin("PublishBundle", bundle)
                    code = await viewer.refused("admin", "StartRollout", start_request(info.digest))
                    assert code == grpc.StatusCode.PERMISSION_DENIED
                    await c.agent("web-1")
                    status = await operator.admin("StartRollout", start_request(info.digest))
                    assert status.by == "otto"  # the principal, not the claimed "mallory"
                    pause = admin_pb2.PauseRequest(policy="heartbeat", reason="db maint", by="x")
                    paused = await operator.admin("Pause", pause)
                    assert paused.pauses[0].by == "otto"
                    code = await operator.refused(
                        "security",
                        "CreateToken",
                        security_pb2.CreateTokenRequest(name="x", role="admin"),
                    )
                    assert code == grpc.StatusCode.PERMISSION_DENIED
                    code = await viewer.refused(
                        "security", "ListTokens", security_pb2.ListTokensRequest()
                    )
                    assert code == grpc.StatusCode.PERMISSION_DENIED
                    # Expired, revoked, and forged tokens are refused alike.
                    await asyncio.sleep(0.35)
                    code = await brief.refused(
                        "admin", "ListRollouts", admin_pb2.ListRolloutsRequest()
                    )
                    assert code == grpc.StatusCode.UNAUTHENTICATED
                    viewer_id = viewer_t.split("_")[1]
                    await admin.security(
                        "RevokeToken", security_pb2.RevokeTokenRequest(id=viewer_id)
                    )
                    code = await viewer.refused(
                        "admin", "ListRollouts", admin_pb2.ListRolloutsRequest()
                    )
                    assert code == grpc.StatusCode.UNAUTHENTICATED
                    async with callers(c, operator_t[:-2] + "xx") as (forged,):
                        code = await forged.refused(
                            "admin", "ListAgents", admin_pb2.ListAgentsRequest()
                        )
                        assert code == grpc.StatusCode.UNAUTHENTICATED
                    listed = await admin.security(
                        "ListTokens", security_pb2.ListTokensRequest(include_inactive=True)
                    )
                    by_name = {t.name: t for t in listed.tokens}
                    assert by_name["vera"].revoked_at > 0 and by_name["otto"].last_used_at > 0
                    assert by_name["otto"].created_by == "root"

                audit = await admin.security("ListAudit", security_pb2.ListAuditRequest())
                # The control plane's own entries (the rollout completing, whenever the agent's
                # apply lands) are not the operators': checked apart.
                every = list(audit.entries)
                system = [e for e in every if e.via == "system"]
                assert {(e.actor, e.action) for e in system} <= {
                    ("control-plane", "rollout.complete")
                }
                entries = [e for e in every if e.via != "system"]
                rows = [(e.actor, e.role, e.action, e.result) for e in entries]
                assert rows == [
                    ("root", "admin", "token.create", "ok"),
                    ("root", "admin", "token.create", "ok"),
                    ("root", "admin", "token.create", "ok"),
                    ("vera", "viewer", "bundle.publish", "PERMISSION_DENIED"),
                    ("otto", "operator", "bundle.publish", "ok"),
                    ("vera", "viewer", "rollout.start", "PERMISSION_DENIED"),
                    ("otto", "operator", "rollout.start", "ok"),
                    ("otto", "operator", "fleet.pause", "ok"),
                    ("otto", "operator", "token.create", "PERMISSION_DENIED"),
                    ("root", "admin", "token.revoke", "ok"),
                ]
                assert (
                    entries[4].target
                    == f"sha256:{json.loads(entries[4].detail_json)['data']['sha256']}"
                )
                assert all(e.source.startswith("ipv4:127.0.0.1:") for e in entries)
                assert all(e.via == "token" for e in entries)
                text = json.dumps([e.detail_json for e in entries])
                for secret in (viewer_t, operator_t, short_t, root):
                    assert secret.split("_", 2)[2] not in text
                verified = await admin.security("VerifyAudit", security_pb2.VerifyAuditRequest())
                # the rollout may complete (one more entry) between the two calls
                assert verified.ok and verified.checked >= len(every)
                if verified.checked == len(every):
                    assert verified.head_hash == every[-1].hash

    run(scenario())


def test_insecure_dev_mode_ends_with_the_first_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c, callers(c, None) as (anonymous,):
            await anonymous.admin("Pause", admin_pb2.PauseRequest(policy="p", by="dana"))
            entries = await c.plane.audit.entries()
            assert [(e.actor, e.role, e.via) for e in entries] == [
                ("insecure-dev", "admin", "insecure-dev")
            ]
            pauses = await anonymous.admin("ListPauses", admin_pb2.ListPausesRequest())
            assert pauses.pauses[0].by == "dana"
            first = await token(anonymous, "root", "admin")  # dev admin may mint the first
            code = await anonymous.refused("admin", "ListPauses", admin_pb2.ListPausesRequest())
            assert code == grpc.StatusCode.UNAUTHENTICATED
            async with callers(c, first) as (root,):
                await root.admin("ListPauses", admin_pb2.ListPausesRequest())

    run(scenario())


def test_operator_certificates_carry_their_role_over_mtls(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            viewer = Caller(c, None, c.operator_credentials("vic", "viewer"))
            operator = Caller(c, None, c.operator_credentials("olga", "operator"))
            try:
                await viewer.admin("ListAgents", admin_pb2.ListAgentsRequest())
                code = await viewer.refused("admin", "Pause", admin_pb2.PauseRequest(policy="p"))
                assert code == grpc.StatusCode.PERMISSION_DENIED
                paused = await operator.admin("Pause", admin_pb2.PauseRequest(policy="p"))
                assert paused.pauses[0].by == "olga"
                # A host's certificate is not an operator's, and TLS alone is no dev mode.
                key, cert, _ = c.issue_host_cert("web-1")
                host = Caller(c, None, c.credentials(cert, key))
                try:
                    code = await host.refused("admin", "ListAgents", admin_pb2.ListAgentsRequest())
                    assert code == grpc.StatusCode.UNAUTHENTICATED
                finally:
                    await host.channel.close()
                entries = await c.plane.audit.entries()
                assert [(e.actor, e.via, e.result) for e in entries] == [
                    ("vic", "cert", "PERMISSION_DENIED"),
                    ("olga", "cert", "ok"),
                ]
            finally:
                await viewer.channel.close()
                await operator.channel.close()

    run(scenario())


def test_agent_and_health_services_are_not_behind_operator_auth(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            await c.plane.auth.create("root", "admin", 0.0, "bootstrap")
            sim = await c.agent("web-1")
            await asyncio.sleep(0.2)
            assert sim.ended is None and c.plane.connections.get("web-1") is not None
            from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

            async with grpc.aio.insecure_channel(c.addr) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

    run(scenario())
