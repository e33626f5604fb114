"""``stanch-cp`` flags, and building a :class:`ControlPlane` from them.

Secrets never come from argv (``ps`` shows argv to every user): the assignment key's passphrase
and the admin token are read from environment variables the flags name.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from agent.bundle.trust import TrustError, TrustStore
from agent.clock import SystemClock
from agent.duration import parse_duration
from agent.errors import StanchError
from agent.instrumentation import split_listen
from controlplane import transport
from controlplane.assignments import make_signer
from controlplane.console.proxies import parse_network
from controlplane.errors import ControlPlaneError
from controlplane.instrumentation import Instruments
from controlplane.keys import load_private_key
from controlplane.plane import ControlPlane, Settings
from controlplane.storage import open_storage
from controlplane.storm import StormSettings


class ConfigError(StanchError):
    """A flag or a file it names cannot be used; the message says which."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen(text: str) -> tuple[str, int]:
    host, port = split_listen(text)
    if host is None or port is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected HOST:PORT such as 127.0.0.1:9465 or [::1]:9465"
        )
    return host, port


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stanch-cp", description="Stanch control plane: fleet channel, rollouts, reports."
    )
    p.add_argument(
        "--db",
        required=True,
        help="SQLite file (created on first start), or a postgresql:// URL shared by replicas",
    )
    p.add_argument("--listen", default="127.0.0.1:7443", help="HOST:PORT (port 0: any free)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext, host ids on the agents' word (development only; warns)",
    )
    transport.add_arguments(p)
    p.add_argument(
        "--assignment-key", required=True, help="the control plane's online Ed25519 key (.key)"
    )
    p.add_argument("--assignment-key-passphrase-env", metavar="VAR")
    p.add_argument("--trust", required=True, help="operator keys: root.json or a *.pub dir")
    p.add_argument("--threshold", type=int, help="operator signatures a bundle needs")
    p.add_argument(
        "--admin-token-env",
        default="STANCH_ADMIN_TOKEN",
        metavar="VAR",
        help=(
            "DEPRECATED: one shared admin token from this variable (default $STANCH_ADMIN_TOKEN, "
            "if set); create per-person tokens with 'stanch-cp tokens create' instead"
        ),
    )
    p.add_argument("--lost-after", type=_duration, default=60.0, help="silence = lost (60s)")
    p.add_argument("--apply-timeout", type=_duration, default=300.0, help="(5m)")
    p.add_argument("--tick", type=_duration, default=1.0, help="rollout re-evaluation (1s)")
    p.add_argument("--presence-interval", type=_duration, default=5.0)
    p.add_argument("--storm-fraction", type=float, default=0.2, help="share of hosts (0.2)")
    p.add_argument("--storm-window", type=_duration, default=300.0, help="(5m)")
    p.add_argument("--storm-min-hosts", type=int, default=3)
    p.add_argument("--storm-pause", type=_duration, default=3600.0, help="(1h)")
    p.add_argument(
        "--report-retention", type=_duration, default=90 * 86400.0, help="keep reports (90d)"
    )
    p.add_argument(
        "--metrics-listen",
        type=_listen,
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz here (off by default; e.g. 127.0.0.1:9465)",
    )
    p.add_argument(
        "--console-listen",
        type=_listen,
        metavar="HOST:PORT",
        help="serve the web console here (off by default; e.g. 127.0.0.1:8443; HTTPS with the "
        "server certificate when TLS is on)",
    )
    p.add_argument(
        "--console-trusted-proxy",
        type=parse_network,
        action="append",
        default=[],
        metavar="CIDR",
        help="a reverse proxy in front of the console (repeatable; off by default): from these "
        "peers the client address is the right-most X-Forwarded-For entry that is not itself "
        "a trusted proxy (login throttling per client), and X-Forwarded-Proto is believed",
    )
    p.add_argument("--replica-id", default=socket.gethostname(), help="rollout lease holder")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", default="auto", choices=("auto", "json", "text"))
    return p


def build(
    args: argparse.Namespace, metrics: Instruments | None = None
) -> tuple[ControlPlane, str | None]:
    if getattr(args, "console_trusted_proxy", None) and not getattr(args, "console_listen", None):
        raise ConfigError("--console-trusted-proxy needs --console-listen (the console is off)")
    passphrase = None
    if args.assignment_key_passphrase_env:
        value = os.environ.get(args.assignment_key_passphrase_env)
        if value is None:
            raise ConfigError(f"${args.assignment_key_passphrase_env} is not set")
        passphrase = value.encode()
    try:
        key = load_private_key(Path(args.assignment_key), passphrase)
        trust = TrustStore.load(args.trust, args.threshold)
    except (StanchError, TrustError) as exc:
        raise ConfigError(str(exc)) from None
    settings = Settings(
        lost_after=args.lost_after,
        apply_timeout=args.apply_timeout,
        storm=StormSettings(
            args.storm_fraction, args.storm_window, args.storm_min_hosts, args.storm_pause
        ),
        tick=args.tick,
        presence_interval=args.presence_interval,
        holder=args.replica_id,
        report_retention=args.report_retention,
    )
    try:
        storage = open_storage(args.db)
    except ControlPlaneError as exc:  # unreachable database, schema newer than this code
        raise ConfigError(f"--db: {exc}") from None
    plane = ControlPlane(storage, trust, make_signer(key), SystemClock(), settings, metrics)
    token = os.environ.get(args.admin_token_env) or None
    return plane, token
