"""Running the console with uvicorn inside the control-plane process, on its own port.

Why in-process: the console's actions must go through the same ``ControlPlane`` objects as the
Admin API (the rollout engine's lock, the kill switch's connected streams, the one audit chain),
and a second process would need a second copy of each. uvicorn's ``Server`` runs as a task in the
control plane's event loop; its own signal handlers are not installed (``stanch-cp`` owns
SIGTERM and stops the console first).

TLS: given a certificate and key the console serves HTTPS and marks its cookies ``Secure``.

Reads: ``start`` opens a read-only sibling of the plane's storage on its own thread
(``controlplane.storage.reader.open_reader(plane.db)``: the same SQLite file, or a second small
pool on the same PostgreSQL) for the pages; ``stop`` closes it.

Proxies: uvicorn's own ``X-Forwarded-For`` handling is off (it trusts ``127.0.0.1`` by default,
which would let anyone on the host pick their login-throttle bucket); ``trusted_proxies``
(``--console-trusted-proxy``) is the only way a forwarded address is believed
(``controlplane.console.proxies``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from controlplane.console.app import AuditSink, Console, TokenCheck, create_app
from controlplane.console.proxies import Network
from controlplane.plane import ControlPlane
from controlplane.storage.reader import open_reader
from controlplane.storage.runner import StorageThread

log = logging.getLogger("stanch.cp.console")


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the control plane owns the signals
        pass


class ConsoleServer:
    def __init__(
        self,
        plane: ControlPlane,
        host: str,
        port: int,
        cert: Path | None = None,
        key: Path | None = None,
        auth: TokenCheck | None = None,
        audit: AuditSink | None = None,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.secure = cert is not None
        self.plane = plane
        self.app = create_app(
            plane, auth=auth, audit=audit, secure=self.secure, trusted_proxies=trusted_proxies
        )
        self.console: Console = self.app.state.console
        self._reads: StorageThread | None = None
        self.host = host
        self.port = port
        self._cert, self._key = cert, key
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.secure else 'http'}://{host}:{self.port}/"

    async def start(self) -> int:
        """Bind (port 0: any free one), start serving; returns the port."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"console: cannot listen on {self.host}:{self.port}: {exc.strerror}; "
                f"choose another --console-listen"
            ) from None
        self.port = sock.getsockname()[1]
        await self._open_reads()
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,  # the app logs method, path and status (never a query string)
            ssl_certfile=str(self._cert) if self._cert else None,
            ssl_keyfile=str(self._key) if self._key else None,
            server_header=False,
            proxy_headers=False,  # see the module docstring: only trusted_proxies count
            lifespan="off",
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="console")
        try:
            await self._started()
        except BaseException:
            await self.stop()
            raise
        log.info("console on %s", self.url)
        if self.console.trusted_proxies:
            log.info(
                "console: client addresses from X-Forwarded-For of %s",
                ", ".join(str(n) for n in self.console.trusted_proxies),
            )
        return self.port

    async def _started(self) -> None:
        assert self._server is not None and self._task is not None
        deadline = asyncio.get_running_loop().time() + 10
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError("console: stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise OSError("console: did not start within 10s")
            await asyncio.sleep(0.01)

    async def _open_reads(self) -> None:
        """The pages' read-only storage thread. Without one (a backend it cannot open twice,
        or opening failed) the pages read through the plane's own storage thread: slower
        under load, never wrong."""
        try:
            self._reads = await asyncio.get_running_loop().run_in_executor(
                None, open_reader, self.plane.db
            )
        except Exception as exc:
            log.warning(
                "console: cannot open a read-only storage reader (%s); pages read through the "
                "control plane's storage thread and may wait behind its writes",
                exc,
            )
            self._reads = None
        self.console.reads = self._reads

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)
        reads, self._reads = self._reads, None
        if reads is not None:
            self.console.reads = None  # a request still running reads through the plane's
            await asyncio.get_running_loop().run_in_executor(None, reads.close)


def tls_files(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """The server certificate and key ``stanch-cp`` serves gRPC with (``--tls-cert``/
    ``--tls-key``, else ``--pki-dir``'s, as ``transport.from_args`` picks them), for HTTPS."""
    from controlplane.pki import PkiPaths

    cert, key = args.tls_cert, args.tls_key
    if args.pki_dir is not None:
        paths = PkiPaths(args.pki_dir)
        cert, key = cert or paths.server_cert, key or paths.server_key
    return (Path(cert), Path(key)) if cert and key else (None, None)
