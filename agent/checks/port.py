"""``port``: does something accept TCP connections on host:port, and how fast.

The cheapest liveness probe there is: a completed handshake proves the listener's accept queue is
being served (or at least not full), without speaking its protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent.checks.base import Check, CheckEnv, CheckType, Sample, Threshold, describe_error
from agent.policy.fields import Fields


@dataclass(frozen=True)
class PortConfig:
    port: int
    host: str = "127.0.0.1"
    connect_timeout: float = 3.0


def parse(f: Fields) -> PortConfig:
    host = f.string("host", "127.0.0.1")
    port = f.integer("port", minimum=1)
    if isinstance(port, int) and port > 65535:
        f.error("port", f"must be a TCP port between 1 and 65535, got {port}")
    if host == "":
        f.error("host", "must not be empty; write an address or name, e.g. 127.0.0.1")
    timeout = f.duration("connect_timeout", "3s", minimum=0.01)
    return PortConfig(port=port or 1, host=host or "127.0.0.1", connect_timeout=timeout or 3.0)


class PortCheck:
    def __init__(self, config: PortConfig) -> None:
        self.config = config

    def sample(self) -> Sample:
        import socket

        c = self.config
        started = time.monotonic()
        try:
            with socket.create_connection((c.host, c.port), timeout=c.connect_timeout):
                elapsed = (time.monotonic() - started) * 1000.0
        except OSError as exc:
            # A refused or timed-out connection is a measurement (the port is down), not an
            # error of the check: ok=0 drives the status, connect_ms shows how long it took.
            elapsed = (time.monotonic() - started) * 1000.0
            return Sample({"ok": 0.0, "connect_ms": round(elapsed, 2)},
                          f"{c.host}:{c.port}: {describe_error(exc)}")  # fmt: skip
        return Sample({"ok": 1.0, "connect_ms": round(elapsed, 2)},
                      f"{c.host}:{c.port} accepted in {elapsed:.1f} ms")  # fmt: skip


def build(config: PortConfig, env: CheckEnv) -> Check:
    return PortCheck(config)


PORT = CheckType(
    name="port",
    parse=parse,
    build=build,
    metrics=frozenset({"ok", "connect_ms"}),
    default_critical=Threshold("ok", "<", 1.0),
    description="Whether a TCP port accepts connections, and the connect time.",
)
