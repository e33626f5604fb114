"""The ``control_plane:`` section of the agent config. Parsing only: no network code here.

::

    control_plane:
      address: cp.example.com:7443
      tls:                      # mTLS (the default); or `insecure: true` for plaintext in a lab
        ca: /etc/stanch/ca.crt                    # the fleet CA (opsctl pki init)
        enroll_token_file: /etc/stanch/enroll-token  # first start only; deleted once used
        # enroll_address: cp.example.com:7444    # default: address, port + 1
        # cert/key: default <state_dir>/tls/agent.crt and agent.key (renewed in place)
        # server_name: cp.example.com            # when address is not the certificate's name
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

Transport: with ``tls`` the agent enrolls once (a single-use token and a CSR for a key made on
the host, ``agent.fleet.enroll``), then connects with its client certificate and renews it before
it expires. ``insecure: true`` is plaintext, and the agent warns on every start.
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
class TlsConfig:
    ca: Path
    """The fleet CA certificate: the control plane's server certificate must chain to it."""
    cert: Path | None = None
    key: Path | None = None
    """Default: ``<state_dir>/tls/agent.crt`` and ``agent.key``."""
    enroll_token_file: Path | None = None
    enroll_address: str | None = None
    """Default: the control plane's address with the port plus one."""
    server_name: str | None = None


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
    tls: TlsConfig | None = None
    """None only with ``insecure``."""


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
    tls = _tls(cp.section("tls")) if cp.has("tls") else None
    if insecure is False and tls is None and not cp.has("tls"):
        cp.error(
            "insecure",
            "mTLS needs control_plane.tls (ca, and enroll_token_file or cert and key); or set "
            "insecure: true (plaintext, for a lab or a trusted network only)",
        )
    if insecure is True and cp.has("tls"):
        cp.error("tls", "insecure: true turns TLS off; remove one of the two")
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
        tls=None if insecure else tls,
    )


def _tls(t: Fields) -> TlsConfig | None:
    ca = t.string("ca")
    cert = t.string("cert", None)
    key = t.string("key", None)
    token = t.string("enroll_token_file", None)
    enroll = t.string("enroll_address", None)
    name = t.string("server_name", None)
    t.done()
    if (cert is None) != (key is None):
        t.error("cert", "cert and key go together")
    if isinstance(enroll, str) and not _valid_address(enroll):
        t.error("enroll_address", f"expected host:port, got {enroll!r}")
    if not isinstance(ca, str):
        return None
    return TlsConfig(
        ca=Path(ca),
        cert=Path(cert) if isinstance(cert, str) else None,
        key=Path(key) if isinstance(key, str) else None,
        enroll_token_file=Path(token) if isinstance(token, str) else None,
        enroll_address=enroll if isinstance(enroll, str) else None,
        server_name=name if isinstance(name, str) else None,
    )


def _valid_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
