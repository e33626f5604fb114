"""sd_notify and the watchdog against a real AF_UNIX datagram socket, the way systemd listens.

The receiving end is bound here exactly as systemd binds ``/run/systemd/notify``: a SOCK_DGRAM
socket, by path or in the abstract namespace. Every assertion is on the bytes that arrived.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.sdnotify import SystemdNotifier, Watchdog, monotonic_usec


class NotifySocket:
    """A listening notify socket; ``messages()`` returns what arrived, parsed."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)

    def raw(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096))
            except TimeoutError:
                return out

    def messages(self) -> list[dict[str, str]]:
        return [
            dict(line.split("=", 1) for line in data.decode().splitlines()) for data in self.raw()
        ]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[NotifySocket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = NotifySocket(path)
    yield sock, path
    sock.close()


def test_lifecycle_messages_reach_a_path_socket(listener: tuple[NotifySocket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    before = monotonic_usec()
    assert notifier.ready("4 policies loaded, 0 errors")
    assert notifier.reloading()
    assert notifier.ready("5 policies loaded")
    assert notifier.status("line one\nline two")
    assert notifier.stopping()
    assert notifier.sent == 5 and notifier.failures == 0

    raw = sock.raw()
    assert raw[0] == b"READY=1\nSTATUS=4 policies loaded, 0 errors\n"
    messages = [dict(line.split("=", 1) for line in r.decode().splitlines()) for r in raw]
    reload = messages[1]
    assert reload["RELOADING"] == "1" and reload["STATUS"] == "reloading policies"
    assert before <= int(reload["MONOTONIC_USEC"]) <= monotonic_usec()
    assert messages[2] == {"READY": "1", "STATUS": "5 policies loaded"}
    assert messages[3] == {"STATUS": "line one line two"}  # One line: no forged assignments.
    assert messages[4] == {"STOPPING": "1", "STATUS": "draining running remediations"}


def test_abstract_namespace_socket() -> None:
    name = f"stanch-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = NotifySocket(b"\0" + name.encode())
    try:
        notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.messages() == [{"READY": "1"}]
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_interval_while_the_loop_beats(
    listener: tuple[NotifySocket, str],
) -> None:
    sock, path = listener
    clock = FakeClock()
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    dog = Watchdog.from_environ(SystemdNotifier.from_environ(environ), environ, clock)
    assert dog.enabled and dog.interval == 10.0

    pinged = []
    for _ in range(25):  # 25 loop iterations, one second apart.
        pinged.append(dog.beat())
        clock.advance(1.0)
    # First beat pings at once, then every 5 s (half of WatchdogSec=10s).
    assert [i for i, p in enumerate(pinged) if p] == [0, 5, 10, 15, 20]
    assert sock.messages() == [{"WATCHDOG": "1"}] * 5
    assert dog.pings == 5


def test_a_wedged_loop_stops_the_pings(listener: tuple[NotifySocket, str]) -> None:
    """No beat, no ping: systemd's WatchdogSec then kills and restarts the agent. /healthz
    turns unhealthy at the same time."""
    sock, path = listener
    clock = FakeClock()
    dog = Watchdog(SystemdNotifier(path), 10.0, clock)
    assert dog.beat()
    assert dog.healthy()
    clock.advance(9.0)  # The loop is stuck: nobody calls beat().
    assert not dog.healthy()
    assert sock.messages() == [{"WATCHDOG": "1"}]
    clock.advance(1.0)
    assert dog.beat()  # It recovered in time: the next beat pings at once (due since 5 s).
    assert sock.messages() == [{"WATCHDOG": "1"}]


def test_watchdog_meant_for_another_process_stays_silent(
    listener: tuple[NotifySocket, str],
) -> None:
    sock, path = listener
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
    dog = Watchdog.from_environ(SystemdNotifier.from_environ(environ), environ, FakeClock())
    assert not dog.enabled
    assert dog.beat() is False
    assert sock.messages() == []


def test_a_socket_that_goes_away_is_survived(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = NotifySocket(path)
    notifier = SystemdNotifier(path)
    assert notifier.ready()
    sock.close()
    os.unlink(path)  # systemd restarted without the socket, say.
    assert notifier.watchdog() is False
    assert notifier.failures == 1
    again = NotifySocket(path)
    try:
        assert notifier.watchdog() is True
        assert again.messages() == [{"WATCHDOG": "1"}]
    finally:
        again.close()
