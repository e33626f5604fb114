"""A private PostgreSQL server for tests that restart or kill it: never the machine's own.

``private_postgres()`` runs ``initdb`` into a fresh temporary directory as the ``postgres`` user
(``runuser -u postgres --``; PostgreSQL refuses to run as root), starts it with ``pg_ctl`` on a
free loopback port with its socket in that directory, trust authentication, ``fsync`` and
``synchronous_commit`` on (a restart must not lose an acknowledged commit), and creates database
``stanch``. :meth:`PrivatePostgres.restart` is ``pg_ctl restart -m fast``. On exit the server is
stopped (``-m immediate``) and the directory removed, even after a failure.

Skips, saying why, when not root, when there is no ``postgres`` user or no server binaries
(``/usr/lib/postgresql/*/bin``), or when ``initdb`` or the start fails.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def server_bin() -> Path | None:
    """The newest installed server's bin directory."""
    found = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            with contextlib.suppress(ValueError):
                found.append((float(candidate.parent.name), candidate))
    return max(found)[1] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PrivatePostgres:
    bin: Path
    data: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/stanch"

    def pg_ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), *args], timeout)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is cut, the server comes back."""
        done = self.pg_ctl("restart", "-m", "fast", "-w", "-l", str(self.log), "-o", self.options)
        assert done.returncode == 0, f"pg_ctl restart failed: {done.stderr}\n{self.tail()}"

    @property
    def options(self) -> str:
        return (
            f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c synchronous_commit=on -c max_connections=50"
        )

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""


def as_postgres(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    if os.geteuid() != 0:
        pytest.skip("a private PostgreSQL is started as the postgres user via runuser: needs root")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no 'postgres' user (PostgreSQL server package not installed)")
    binaries = server_bin()
    if binaries is None or shutil.which("runuser") is None:
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (or no runuser)")
    # Not under pytest's tmp_path: its parents are 0700 root, which the postgres user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="stanch-pg-"))
    os.chown(base, user.pw_uid, user.pw_gid)
    os.chmod(base, 0o700)
    server = PrivatePostgres(binaries, base / "data", free_port(), base / "server.log")
    started = False
    try:
        init = as_postgres(
            [str(binaries / "initdb"), "-D", str(server.data), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--no-instructions"],
            120,
        )  # fmt: skip
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr.strip()[-500:]}")
        start = server.pg_ctl("start", "-w", "-l", str(server.log), "-o", server.options)
        if start.returncode != 0:
            pytest.skip(f"a private PostgreSQL did not start: {start.stderr}\n{server.tail()}")
        started = True
        created = as_postgres(
            [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U",
             "postgres", "stanch"],
            60,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        yield server
    finally:
        if started:
            server.pg_ctl("stop", "-m", "immediate", "-w", timeout=60)
        shutil.rmtree(base, ignore_errors=True)
