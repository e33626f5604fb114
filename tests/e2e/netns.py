"""A real network namespace joined to the root namespace by a veth pair, for partition tests.

``partitionable()`` makes ``stanch-t<random>`` (the namespace) and a veth pair on a private /30
picked from 10.250.0.0/16 that no route of this machine already covers; the root side is
``.1``, the namespace side ``.2``. Processes started with :attr:`Netns.exec` (``ip netns exec``)
reach the root side only through the pair, so :meth:`Netns.cut` (``ip link set down`` on the root
end) is a real partition and :meth:`Netns.heal` ends it. Everything is deleted on exit, even
after a failure; names are unique per run, so parallel runs do not collide.

The tests skip, saying why, when not root or when ``ip netns`` is not allowed (a container
without CAP_SYS_ADMIN/CAP_NET_ADMIN, no iproute2).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

ROUTE_TYPES = {"local", "broadcast", "unicast", "blackhole", "unreachable", "prohibit", "throw",
               "multicast", "anycast", "nat"}  # fmt: skip


class NetnsUnavailable(Exception):
    """Network namespaces cannot be made here; the message says why."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class Netns:
    name: str
    root_if: str
    ns_if: str
    root_ip: str
    ns_ip: str

    @property
    def exec(self) -> list[str]:
        """The argv prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        ip("link", "set", self.root_if, "down")

    def heal(self) -> None:
        ip("link", "set", self.root_if, "up")

    def reachable(self, port: int, timeout: float = 1.0) -> bool:
        """Can a process inside the namespace open a TCP connection to ``root_ip:port``?"""
        probe = (
            "import socket, sys\n"
            f"s = socket.socket(); s.settimeout({timeout})\n"
            f"sys.exit(s.connect_ex(({self.root_ip!r}, {port})))\n"
        )
        done = subprocess.run(
            [*self.exec, sys.executable, "-c", probe],
            capture_output=True, timeout=timeout + 15, check=False,
        )  # fmt: skip
        return done.returncode == 0


def free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A /30 in 10.250.0.0/16 that overlaps no route of this machine."""
    used: list[ipaddress.IPv4Network] = []
    for line in ip("-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if not words:
            continue
        dest = words[1] if words[0] in ROUTE_TYPES and len(words) > 1 else words[0]
        with contextlib.suppress(ValueError):  # "default" and other non-networks
            net = ipaddress.ip_network(dest, strict=False)
            if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
                used.append(net)
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.250.{rng.randrange(256)}.{rng.randrange(64) * 4}/30")
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsUnavailable("no free /30 in 10.250.0.0/16")


@contextlib.contextmanager
def partitionable() -> Iterator[Netns]:
    """A namespace and veth pair (see the module docstring); skips the test when impossible."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed")
    tag = f"{os.getpid() % 10000:04d}{random.randrange(16**3):03x}"
    ns = Netns(f"stanch-t{tag}", f"stv{tag}", f"stn{tag}", "", "")
    try:
        net = free_subnet(random.Random())
        first, second = list(net.hosts())
        ns = Netns(ns.name, ns.root_if, ns.ns_if, str(first), str(second))
        ip("netns", "add", ns.name)
    except NetnsUnavailable as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        ip("link", "add", ns.root_if, "type", "veth", "peer", "name", ns.ns_if)
        ip("link", "set", ns.ns_if, "netns", ns.name)
        ip("addr", "add", f"{ns.root_ip}/30", "dev", ns.root_if)
        ip("link", "set", ns.root_if, "up")
        ip("netns", "exec", ns.name, "ip", "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if)
        ip("netns", "exec", ns.name, "ip", "link", "set", ns.ns_if, "up")
        ip("netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
        wait_link(ns)
        yield ns
    finally:
        ip("link", "del", ns.root_if, check=False)  # deletes both ends
        ip("netns", "del", ns.name, check=False)


def wait_link(ns: Netns, timeout: float = 10.0) -> None:
    """Until the pair passes packets (a veth may need a moment after ``up``)."""
    deadline = time.monotonic() + timeout
    with socket.socket() as listener:
        listener.bind((ns.root_ip, 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        while time.monotonic() < deadline:
            if ns.reachable(port):
                return
            time.sleep(0.2)
    raise AssertionError(f"the veth pair {ns.root_if}/{ns.ns_if} never passed packets")
