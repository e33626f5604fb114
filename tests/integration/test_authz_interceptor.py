"""The interceptor on its own, on a real loopback gRPC server with a service it has never heard
of: unary-unary and unary-stream handlers are both guarded, an unlisted method needs admin and
is audited, a handler's failure is recorded with its status code, and the handler sees the
principal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cp_harness import run, until

from agent.clock import SystemClock
from controlplane.audit import AuditLog
from controlplane.auth import Authenticator, current_principal
from controlplane.auth_interceptor import OperatorAuth
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage

SERVICE = "stanch.v1.Future"


async def whoami(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    principal = current_principal()
    assert principal is not None
    if request == b"fail":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused by the handler")
    return f"{principal.name}/{principal.role}".encode()


async def count(
    request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    principal = current_principal()
    assert principal is not None
    for i in range(int(request.decode())):
        yield f"{principal.name}:{i}".encode()


async def _five(audit: AuditLog) -> list[Any] | None:
    entries = await audit.entries()
    return entries if len(entries) >= 5 else None


def handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "WhoAmI": grpc.unary_unary_rpc_method_handler(whoami),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )


def test_unknown_services_are_admin_only_streams_guarded_and_outcomes_audited(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store = StorageThread(SqliteStorage(tmp_path / "cp.db"))
        auth, audit = Authenticator(store, SystemClock()), AuditLog(store, SystemClock())
        admin_t, _ = await auth.create("ada", "admin", 0.0, "test")
        operator_t, _ = await auth.create("otto", "operator", 0.0, "test")
        server = grpc.aio.server(interceptors=[OperatorAuth(auth, audit)])
        server.add_generic_rpc_handlers((handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        who = channel.unary_unary(f"/{SERVICE}/WhoAmI")
        stream = channel.unary_stream(f"/{SERVICE}/Count")

        def bearer(token: str) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {token}"),)

        try:
            assert await who(b"", metadata=bearer(admin_t), timeout=5) == b"ada/admin"
            got = [m async for m in stream(b"3", metadata=bearer(admin_t), timeout=5)]
            assert got == [b"ada:0", b"ada:1", b"ada:2"]
            for call, request in ((who, b""), (stream, b"2")):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    result = call(request, metadata=bearer(operator_t), timeout=5)
                    if call is stream:
                        _ = [m async for m in result]
                    else:
                        await result
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    result = call(request, timeout=5)
                    _ = [m async for m in result] if call is stream else await result
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await who(b"fail", metadata=bearer(admin_t), timeout=5)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert info.value.details() == "refused by the handler"

            # grpc sends an aborted call's status at once; the entry follows a moment later.
            entries = await until(lambda: _five(audit), what="the aborted call's audit entry")
            assert [(e.actor, e.action, e.result) for e in entries] == [
                ("ada", "WhoAmI", "ok"),
                ("ada", "Count", "ok"),
                ("otto", "WhoAmI", "PERMISSION_DENIED"),
                ("otto", "Count", "PERMISSION_DENIED"),
                ("ada", "WhoAmI", "FAILED_PRECONDITION"),
            ]
            assert (await audit.verify()).ok
        finally:
            await channel.close()
            await server.stop(0.5)
            await asyncio.get_running_loop().run_in_executor(None, store.close)

    run(scenario())
