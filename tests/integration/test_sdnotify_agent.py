"""A real agent process under a fake systemd: READY after start-up, watchdog pings from the main
loop, RELOADING/READY around SIGHUP, STOPPING on SIGTERM, all as datagrams on a real socket."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import AgentHarness


def receive(sock: socket.socket, until: float) -> list[dict[str, str]]:
    out = []
    while time.monotonic() < until:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
    return out


def wait_message(sock: socket.socket, key: str, timeout: float = 15.0) -> list[dict[str, str]]:
    """Messages up to and including the first that sets ``key``."""
    seen: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        seen.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        if key in seen[-1]:
            return seen
    raise AssertionError(f"no {key}= within {timeout:g}s; got {seen}")


def test_the_agent_speaks_sd_notify(harness: AgentHarness, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    try:
        harness.write_policy("web", harness.flag_policy("web-flag", tmp_path, fix=False))
        # WATCHDOG_PID is left out: the harness starts the agent directly (no wrapper shell),
        # so systemd would have named this very pid; an unset WATCHDOG_PID means "whoever".
        proc = harness.spawn({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        ready = wait_message(sock, "READY")[-1]
        assert ready["STATUS"] == "1 policies, 0 firing, 0 load errors"
        pings = [m for m in receive(sock, time.monotonic() + 3.5) if "WATCHDOG" in m]
        assert 2 <= len(pings) <= 5  # every ~1 s (half of WatchdogSec=2s)

        os.kill(proc.pid, signal.SIGHUP)
        reload = wait_message(sock, "RELOADING")[-1]
        assert int(reload["MONOTONIC_USEC"]) > 0
        assert "READY" in wait_message(sock, "READY")[-1]

        os.kill(proc.pid, signal.SIGTERM)
        stopping = wait_message(sock, "STOPPING")[-1]
        assert stopping["STATUS"] == "draining running remediations"
        assert proc.wait(timeout=30) == 0
    finally:
        sock.close()
