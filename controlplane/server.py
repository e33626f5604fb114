"""``stanch-cp``: the control-plane process (``python -m controlplane.server``).

One grpc.aio server on one port carries ``stanch.v1.Fleet`` (agents), ``stanch.v1.Admin``
(opsctl), the standard health service (``grpc.health.v1``) and reflection (so ``grpcurl`` works
without the .proto files). Keepalives: the server pings an idle agent every 30 s and drops it if
no answer comes within 10 s, and accepts agent pings down to every 10 s (more often is a
misbehaving client and gets GOAWAY). Messages are bounded at a little over the largest bundle.

Transport: mTLS arrives with its own issue. Until then the server refuses to start without
``--insecure`` and, with it, logs a warning on every start.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from agent.bundle.archive import MAX_BUNDLE_BYTES
from agent.logs import JsonFormatter, TextFormatter, choose_format
from controlplane import server_config, services
from controlplane.instrumentation import open_metrics
from controlplane.plane import ControlPlane

log = logging.getLogger("stanch.cp")
MAX_MESSAGE = MAX_BUNDLE_BYTES + (4 << 20)
ADMIN_PREFIX = "/stanch.v1.Admin/"
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # grpc sets SO_REUSEPORT by default: a second control plane on the same port would silently
    # share the agents with the first. One port, one process.
    ("grpc.so_reuseport", 0),
]
Handler = grpc.RpcMethodHandler
Q = TypeVar("Q")
R = TypeVar("R")


class TokenAuth(grpc.aio.ServerInterceptor):
    """Admin calls must carry ``authorization: Bearer <token>``; agent calls are not affected
    (they will be authenticated by mTLS). Compared in constant time; never logged."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler[Q, R] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler[Q, R] | None:
        details = handler_call_details
        if not details.method.startswith(ADMIN_PREFIX):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return await continuation(details)
        denied: Handler[Any, Any] = grpc.unary_unary_rpc_method_handler(_deny)
        return denied


async def _deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token; set STANCH_TOKEN")


class Server:
    """The gRPC server around a :class:`ControlPlane`; ``start`` returns the bound port."""

    def __init__(self, plane: ControlPlane, listen: str, token: str | None = None) -> None:
        self.plane = plane
        self.listen = listen
        # Metrics first, so the calls the token check refuses are timed and counted too.
        timing = plane.metrics.interceptor()
        interceptors: list[grpc.aio.ServerInterceptor] = [timing] if timing else []
        if token:
            interceptors.append(TokenAuth(token))
        self.grpc = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        self.health = services.register(self.grpc, plane)
        self.port = 0

    async def start(self) -> int:
        try:
            self.port = self.grpc.add_insecure_port(self.listen)
        except RuntimeError:  # grpc reports a failed bind this way, without the errno
            self.port = 0
        if not self.port:
            raise OSError(f"cannot listen on {self.listen}: in use, or not a local address")
        await self.plane.start()
        await self.grpc.start()
        await self.health.serving(True)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.serving(False)
        self.plane.connections.close_all()  # agents reconnect (with backoff) to a replica
        await self.grpc.stop(grace)
        await self.plane.stop()


async def serve(args: argparse.Namespace) -> int:
    metrics = open_metrics(args.metrics_listen)
    plane, token = server_config.build(args, metrics)
    server = Server(plane, args.listen, token)
    port = await server.start()
    metrics.serve(plane, asyncio.get_running_loop())  # before "listening": scrapable once up
    host = args.listen.rsplit(":", 1)[0]
    print(f"stanch-cp listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    metrics.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = server_config.parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    if choose_format(args.log_format, sys.stderr) == "text":
        handler.setFormatter(TextFormatter(colour=sys.stderr.isatty()))
    else:
        handler.setFormatter(JsonFormatter(socket.gethostname()))
    root = logging.getLogger("stanch.cp")
    root.handlers[:] = [handler]
    root.setLevel(args.log_level.upper())
    root.propagate = False
    if not args.insecure:
        print(
            "stanch-cp: TLS is not implemented yet; pass --insecure to serve plaintext on a "
            "trusted network (mTLS for agents arrives with the transport-security issue)",
            file=sys.stderr,
        )
        return 2
    log.warning(
        "INSECURE: serving plaintext gRPC on %s; agent and operator traffic is neither "
        "encrypted nor authenticated by TLS. Use only on a trusted network.",
        args.listen,
    )
    try:
        return asyncio.run(serve(args))
    except server_config.ConfigError as exc:
        print(f"stanch-cp: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"stanch-cp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
