"""The ``control_plane:`` section of the agent config. Parsing only: no network code here.

::

    control_plane:
      address: cp.example.com:7443
      insecure: true            # plaintext; for a lab only until mTLS lands
      assignment_keys: /etc/stanch/assignment-keys   # *.pub: the control plane's online key(s)
      trust: /etc/stanch/trust                       # bundle keys: *.pub or root.json
      trust_threshold: 2        # optional; a root.json carries its own
      reconnect: {initial: 1s, max: 60s}
      heartbeat: 10s
      report_batch: 100
      outbox_limit: 100000

Two trust anchors on purpose: the *assignment* keys say which bundle a host should run and in
which order (an online key, rotated by the control plane's operators); the *bundle* keys say what
a bundle may contain (offline operator keys). A stolen online key can only point hosts at bundles
that operators already signed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.policy.fields import Fields

DEFAULT_OUTBOX_LIMIT = 100_000


@dataclass(frozen=True)
class Reconnect:
    initial: float = 1.0
    maximum: float = 60.0


@dataclass(frozen=True)
class ControlPlaneConfig:
    address: str
    """``host:port`` of the control plane's Fleet service."""
    assignment_keys: Path
    """Directory of ``*.pub`` Ed25519 keys; an assignment must be signed by one of them."""
    trust: Path
    """Bundle trust: a directory of ``*.pub`` keys or a signed ``root.json``."""
    trust_threshold: int | None = None
    insecure: bool = False
    reconnect: Reconnect = Reconnect()
    heartbeat: float = 10.0
    report_batch: int = 100
    outbox_limit: int = DEFAULT_OUTBOX_LIMIT
    keepalive: float = 30.0
    """Seconds between HTTP/2 pings on an idle connection (a dead peer is noticed in
    ``keepalive`` + 10 s). At least 10 s: servers refuse more frequent pings (GOAWAY)."""


def parse_control_plane(f: Fields) -> ControlPlaneConfig | None:
    """Read ``control_plane`` from the config mapping ``f``; None when the section is absent.
    Errors go to ``f``'s sink with their paths, like every other config error."""
    if not f.has("control_plane") or f.raw.get("control_plane") is None:
        f.get("control_plane", None)  # mark it seen
        return None
    cp = f.section("control_plane")
    address = cp.string("address")
    if isinstance(address, str) and not _valid_address(address):
        cp.error("address", f"expected host:port, got {address!r}")
    insecure = cp.boolean("insecure", False)
    if insecure is False:
        cp.error(
            "insecure",
            "mTLS to the control plane is not implemented yet; set insecure: true "
            "(plaintext, for a lab or a trusted network only)",
        )
    keys = cp.string("assignment_keys")
    trust = cp.string("trust")
    threshold = cp.integer("trust_threshold", None, minimum=1)
    rc = cp.section("reconnect")
    initial = rc.duration("initial", "1s", minimum=0.01)
    maximum = rc.duration("max", "60s", minimum=0.01)
    rc.done()
    if isinstance(initial, float) and isinstance(maximum, float) and maximum < initial:
        cp.error("reconnect.max", "must not be shorter than reconnect.initial")
    heartbeat = cp.duration("heartbeat", "10s", minimum=0.05)
    batch = cp.integer("report_batch", 100, minimum=1)
    limit = cp.integer("outbox_limit", DEFAULT_OUTBOX_LIMIT, minimum=1)
    keepalive = cp.duration("keepalive", "30s", minimum=10.0)
    cp.done()
    if not all(isinstance(v, str) for v in (address, keys, trust)):
        return None  # the missing field was reported; the caller raises
    return ControlPlaneConfig(
        address=address,
        assignment_keys=Path(keys),
        trust=Path(trust),
        trust_threshold=threshold,
        insecure=bool(insecure),
        reconnect=Reconnect(initial or 1.0, maximum or 60.0),
        heartbeat=heartbeat or 10.0,
        report_batch=batch or 100,
        outbox_limit=limit or DEFAULT_OUTBOX_LIMIT,
        keepalive=keepalive or 30.0,
    )


def _valid_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
