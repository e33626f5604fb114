"""A real control plane for the fleet benchmarks: ``python -m controlplane.server`` as a child.

:class:`ControlPlaneProcess` makes what the process needs in a work directory (an operator
release key and its trust dir, the online assignment key), starts ``stanch-cp --insecure`` (or
with mTLS, ``tls=True``: a CA made here, ``--pki-dir``, and an admin operator certificate for the
Admin API) on SQLite (or ``--db postgresql://...``), and speaks the Admin API with the plain gRPC
stub: publish a signed bundle built by ``controlplane.bundle_fixtures``, start a rollout, read it.
``terminate`` is SIGTERM (the graceful path), ``start`` again reuses the database and the port.
Timings are production defaults unless ``flags`` say otherwise: the benchmark measures the
control plane as shipped.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from controlplane.bundle_fixtures import KeyRing, make_bundle, policy_text, write_source
from controlplane.keys import generate
from controlplane.pki import DEFAULT_SANS, Authority, PkiPaths, init_pki
from controlplane.pki_issue import issue_operator
from stanch.v1 import admin_pb2, admin_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


@dataclass
class ControlPlaneProcess:
    work: Path
    db: str = ""
    """SQLite path or a postgresql:// URL; default ``work/cp.db``."""
    flags: tuple[str, ...] = ()
    port: int = 0
    ring: KeyRing = field(default_factory=lambda: KeyRing.generate(1))
    tls: bool = False
    """mTLS (``--pki-dir``, a CA made here; the Admin API with an operator certificate) rather
    than ``--insecure``."""
    proc: subprocess.Popen[bytes] | None = None
    _channel: grpc.Channel | None = None
    _admin_credentials: grpc.ChannelCredentials | None = None

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.ring.write_pubs(self.work / "trust")
        if not (self.work / "cp" / "assign.key").exists():
            generate(self.work / "cp", "assign")
        self.db = self.db or str(self.work / "cp.db")
        if self.tls:
            paths = PkiPaths(self.pki_dir)
            if not paths.ca_key.exists():
                init_pki(self.pki_dir, DEFAULT_SANS, time.time())
            ca = Authority.load(paths.ca_cert, paths.ca_key)
            key, issued = issue_operator(ca, "bench", "admin", time.time())
            root = paths.ca_cert.read_bytes()
            self._admin_credentials = grpc.ssl_channel_credentials(root, key, issued.pem)

    @property
    def pki_dir(self) -> Path:
        return self.work / "pki"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "fleet_sim_cp: the control plane is not running; start() it"
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "controlplane.server",
            "--db",
            self.db,
            "--listen",
            f"127.0.0.1:{self.port}",
            *(("--pki-dir", str(self.pki_dir)) if self.tls else ("--insecure",)),
            "--assignment-key",
            str(self.work / "cp" / "assign.key"),
            "--trust",
            str(self.work / "trust"),
            "--log-level",
            "warning",
            "--log-format",
            "json",
            *self.flags,
        ]

    def start(self) -> float:
        """Start the process; return seconds until it printed "listening on"."""
        started = time.monotonic()
        log = (self.work / "cp.log").open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            preexec_fn=_raise_fds,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline().decode() if ready else ""
        if "listening on" not in line:
            self.proc.kill()
            tail = (self.work / "cp.log").read_text()[-2000:]
            raise RuntimeError(f"fleet_sim_cp: stanch-cp did not start; its log ends:\n{tail}")
        self.port = int(line.rsplit(":", 1)[1])
        if self._admin_credentials is not None:
            self._channel = grpc.secure_channel(self.addr, self._admin_credentials)
        else:
            self._channel = grpc.insecure_channel(self.addr)
        return time.monotonic() - started

    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM and wait; return seconds the shutdown took."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return time.monotonic() - started

    def admin(self, method: str, request: Any, timeout: float = 60.0) -> Any:
        assert self._channel is not None, "fleet_sim_cp: start() the control plane first"
        stub = admin_pb2_grpc.AdminStub(self._channel)  # type: ignore[no-untyped-call]
        return getattr(stub, method)(request, timeout=timeout)

    def publish(self, version: int = 1) -> str:
        """Build, sign and publish a one-policy bundle; return its digest."""
        source = write_source(
            self.work / f"src-{version}", {"heartbeat.yaml": policy_text("heartbeat")}
        )
        built = make_bundle(source, self.ring, [0], version=version, created=time.time() - 60)
        info = self.admin("PublishBundle", admin_pb2.PublishBundleRequest(data=built.data))
        return str(info.digest)

    def start_rollout(
        self, digest: str, waves: tuple[str, ...], bake: float = 0.0
    ) -> admin_pb2.RolloutStatus:
        request = admin_pb2.StartRolloutRequest(
            bundle=digest,
            selector={"env": "prod"},
            waves=list(waves),
            bake_seconds=bake,
            by="bench",
        )
        status: admin_pb2.RolloutStatus = self.admin("StartRollout", request)
        return status

    def rollout(self, rollout_id: str) -> admin_pb2.RolloutStatus:
        status: admin_pb2.RolloutStatus = self.admin(
            "GetRollout", admin_pb2.GetRolloutRequest(id=rollout_id)
        )
        return status

    def connected_agents(self) -> int:
        """Agents the control plane's store marks connected (its own view, not the simulator's)."""
        agents = self.admin("ListAgents", admin_pb2.ListAgentsRequest()).agents
        return sum(1 for a in agents if a.connected)


def _raise_fds() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 65536 if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
