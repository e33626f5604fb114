"""``stanch-cp``: the control-plane process (``python -m controlplane.server``).

One grpc.aio server carries ``stanch.v1.Fleet`` and ``Enrollment`` (agents), ``stanch.v1.Admin``,
``Security`` and ``Pki`` (opsctl; see ``controlplane.services``), the standard health service
(``grpc.health.v1``) and reflection (so ``grpcurl`` works without the .proto files).
Keepalives: the server pings an idle agent every 30 s and drops it if no answer comes within
10 s, and accepts agent pings down to every 10 s (more often is a misbehaving client and gets
GOAWAY). Messages are bounded at a little over the largest bundle.

Transport (``controlplane.transport``): mTLS on ``--listen`` and server-authenticated TLS for
enrollment on ``--enroll-listen``, from ``--pki-dir`` or ``--tls-cert/--tls-key/--client-ca``.
Without TLS material the server refuses to start unless ``--insecure`` (plaintext, one port),
which logs a loud warning on every start. A flood of bad connections is bounded: a TLS or HTTP/2
handshake not done within 10 s is dropped, and one connection carries at most 1,000 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from agent.bundle.archive import MAX_BUNDLE_BYTES
from agent.logs import JsonFormatter, TextFormatter, choose_format
from agent.sqlite_db import DatabaseFileError
from controlplane import server_config, services, token_cli, transport
from controlplane.auth_interceptor import OperatorAuth
from controlplane.enroll_service import EnrollmentService
from controlplane.instrumentation import open_metrics
from controlplane.plane import ControlPlane
from controlplane.ratelimit import EnrollLimiter

if TYPE_CHECKING:
    from controlplane.console.serve import ConsoleServer

log = logging.getLogger("stanch.cp")
MAX_MESSAGE = MAX_BUNDLE_BYTES + (4 << 20)
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
    # A flood of connections that never finish their handshake (or a stranger's garbage) is
    # dropped after 10 s instead of grpc's default 120 s; streams per connection are bounded.
    ("grpc.server_handshake_timeout_ms", 10_000),
    ("grpc.max_concurrent_streams", 1000),
]
Handler = grpc.RpcMethodHandler
Q = TypeVar("Q")
R = TypeVar("R")
T = TypeVar("T")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
EVENT_LOOP_ENV = "STANCH_CP_EVENT_LOOP"


class Server:
    """The gRPC server around a :class:`ControlPlane`; ``start`` returns the bound port."""

    def __init__(
        self,
        plane: ControlPlane,
        listen: str,
        token: str | None = None,
        tls: transport.Tls | None = None,
    ) -> None:
        """``tls`` None serves plaintext (``--insecure``; the caller warns)."""
        self.plane = plane
        self.listen = listen
        self.tls = tls
        # Metrics first, so the calls the token check refuses are timed and counted too.
        timing = plane.metrics.interceptor()
        interceptors: list[grpc.aio.ServerInterceptor] = [timing] if timing else []
        # Operator calls: one interceptor authenticates, authorises and audits them all. In
        # plaintext development mode with no token ever created, callers are "insecure-dev"
        # admins (warned at start); with TLS, never.
        plane.auth.dev_mode = tls is None
        plane.auth.accept_legacy(token)
        interceptors.append(OperatorAuth(plane.auth, plane.audit))
        self.grpc = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        ca = tls.ca if tls else None
        limiter = EnrollLimiter(plane.clock.now, tls.limits if tls else None)
        lifetime = tls.cert_lifetime if tls else transport.HOST_LIFETIME
        enrollment = EnrollmentService(plane, ca, limiter, lifetime)
        self.health = services.register(self.grpc, plane, enrollment)
        self.port = 0
        self.enroll_port = 0

    async def start(self) -> int:
        tls = self.tls
        if tls is None:
            self.port = _bind(self.grpc.add_insecure_port, self.listen)
        else:
            self.port = _bind(lambda a: self.grpc.add_secure_port(a, tls.mtls()), self.listen)
            self.enroll_port = _bind(
                lambda a: self.grpc.add_secure_port(a, tls.server_only()), tls.enroll_listen
            )
        await self.plane.start()
        if await self.plane.auth.dev_principal() is not None:
            log.warning(
                "NO OPERATOR AUTHENTICATION: no API token exists, so every operator call is "
                "served as admin 'insecure-dev'. Create one with 'stanch-cp tokens create --db "
                "DB --name NAME --role admin'; from then on tokens are required."
            )
        await self.grpc.start()
        await self.health.serving(True)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.serving(False)
        self.plane.connections.close_all()  # agents reconnect (with backoff) to a replica
        await self.grpc.stop(grace)
        await self.plane.stop()


def _bind(add_port: Callable[[str], int], address: str) -> int:
    try:
        port = add_port(address)
    except RuntimeError:  # grpc reports a failed bind this way, without the errno
        port = 0
    if not port:
        raise OSError(f"cannot listen on {address}: in use, or not a local address")
    return port


async def serve(args: argparse.Namespace, tls: transport.Tls | None = None) -> int:
    metrics = open_metrics(args.metrics_listen)
    plane, token = server_config.build(args, metrics)
    if token:
        log.warning(
            "$%s is deprecated: it acts as one shared admin token. Create named tokens with "
            "'stanch-cp tokens create' / 'opsctl tokens create' and unset it.",
            args.admin_token_env,
        )
    server = Server(plane, args.listen, token, tls)
    port = await server.start()
    metrics.serve(plane, asyncio.get_running_loop())  # before "listening": scrapable once up
    host = args.listen.rsplit(":", 1)[0]
    print(f"stanch-cp listening on {host}:{port}", flush=True)
    if tls is not None:
        enroll_host = tls.enroll_listen.rsplit(":", 1)[0]
        print(f"stanch-cp enrollment on {enroll_host}:{server.enroll_port}", flush=True)
    console = await start_console(args, plane, tls is not None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down")
    if console is not None:
        await console.stop()
    await server.stop()
    metrics.close()
    return 0


async def start_console(
    args: argparse.Namespace, plane: ControlPlane, tls: bool
) -> ConsoleServer | None:
    """The web console on ``--console-listen`` (HTTPS with the server certificate under TLS)."""
    if not args.console_listen:
        return None
    from controlplane.console.serve import ConsoleServer, tls_files

    host, port = args.console_listen
    cert, key = tls_files(args) if tls else (None, None)
    console = ConsoleServer(
        plane, host, port, cert, key, trusted_proxies=args.console_trusted_proxy
    )
    await console.start()
    print(f"stanch-cp console on {console.url}", flush=True)
    return console


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tokens"]:  # offline: the database is opened directly, no server runs
        return token_cli.offline_main(argv[1:])
    p = server_config.parser()
    p.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=os.environ.get(EVENT_LOOP_ENV, "auto"),
        help=f"auto: uvloop when installed, else asyncio's own (default: ${EVENT_LOOP_ENV}, "
        "else auto)",
    )
    args = p.parse_args(argv)
    if args.event_loop not in EVENT_LOOPS:
        print(
            f"stanch-cp: ${EVENT_LOOP_ENV}={args.event_loop!r}: expected one of "
            f"{', '.join(EVENT_LOOPS)}",
            file=sys.stderr,
        )
        return 2
    handler = logging.StreamHandler(sys.stderr)
    if choose_format(args.log_format, sys.stderr) == "text":
        handler.setFormatter(TextFormatter(colour=sys.stderr.isatty()))
    else:
        handler.setFormatter(JsonFormatter(socket.gethostname()))
    root = logging.getLogger("stanch.cp")
    root.handlers[:] = [handler]
    root.setLevel(args.log_level.upper())
    root.propagate = False
    try:
        tls = transport.from_args(args)
    except transport.TransportError as exc:
        print(f"stanch-cp: {exc}", file=sys.stderr)
        return 2
    if tls is None and not args.insecure:
        print(f"stanch-cp: {transport.NO_TLS}", file=sys.stderr)
        return 2
    if tls is None:
        log.warning(
            "INSECURE: serving plaintext gRPC on %s; agent and operator traffic is neither "
            "encrypted nor authenticated by TLS, and host ids are taken on the agents' word. "
            "Use only on a trusted network.",
            args.listen,
        )
    try:
        loop_factory = event_loop_factory(args.event_loop)
    except ImportError as exc:
        print(
            f"stanch-cp: --event-loop uvloop: {exc}; install uvloop or pass auto", file=sys.stderr
        )
        return 2
    try:
        return run(serve(args, tls), loop_factory)
    except server_config.ConfigError as exc:
        print(f"stanch-cp: {exc}", file=sys.stderr)
        return 2
    except DatabaseFileError as exc:  # corrupt (65: waiting won't help) or locked/full (75)
        print(f"stanch-cp: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"stanch-cp: {exc}", file=sys.stderr)
        return 2


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to serve on. uvloop (libuv) roughly halves the loop's own overhead per
    callback, which is most of a busy control plane's CPU (each agent message is a few
    callbacks); grpc.aio runs on whichever loop is running. ``auto`` falls back to asyncio's
    loop when uvloop is not installed; ``uvloop`` insists (ImportError); ``asyncio`` is the
    escape hatch should uvloop misbehave somewhere."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        log.info("uvloop is not installed: serving on asyncio's own event loop")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(
    coro: Coroutine[Any, Any, T], loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> T:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        loop = runner.get_loop()
        log.info("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
        return runner.run(coro)


if __name__ == "__main__":
    sys.exit(main())
