"""The control plane as a real process (``python -m controlplane.server``), for tests that
kill it (SIGKILL, no goodbye) and start it again on the same database and port, and for
``opsctl`` run as a real command against it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cp_harness import Operator

from controlplane.bundle_fixtures import KeyRing
from controlplane.keys import generate, load_private_key

REPO = Path(__file__).resolve().parents[2]
FAST_FLAGS = (
    "--tick",
    "50ms",
    "--presence-interval",
    "100ms",
    "--lost-after",
    "5s",
    "--apply-timeout",
    "5s",
    "--log-format",
    "json",
)


@dataclass
class ServerProcess(Operator):
    proc: subprocess.Popen[bytes] | None = None
    db: str = ""
    """``--db``: a ``postgresql://`` URL (replicas share it), or "" for ``tmp/cp.db``."""
    name: str = "cp"
    """Log file ``tmp/<name>.log``: replicas sharing ``tmp`` (and its keys) log apart."""

    @classmethod
    def create(cls, tmp: Path) -> ServerProcess:
        ring = KeyRing.generate(1)
        ring.write_pubs(tmp / "trust")
        generate(tmp / "cp", "assign")
        key = load_private_key(tmp / "cp" / "assign.key")
        return cls(tmp, ring, key)

    def start(self, *extra: str) -> None:
        log = (self.tmp / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlplane.server",
                "--db",
                self.db or str(self.tmp / "cp.db"),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--insecure",
                "--assignment-key",
                str(self.tmp / "cp" / "assign.key"),
                "--trust",
                str(self.tmp / "trust"),
                *FAST_FLAGS,
                *extra,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline().decode() if ready else ""
        if "listening on" not in line:
            self.proc.kill()
            raise AssertionError(
                f"stanch-cp did not start: {(self.tmp / f'{self.name}.log').read_text()}"
            )
        self.port = int(line.rsplit(":", 1)[1])
        self.open_admin()

    def kill(self) -> None:
        """SIGKILL: no shutdown path runs, as in a crash or an OOM kill."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    async def close(self) -> None:
        await self.close_agents()
        await self._admin_channel.close()
        self.terminate()
