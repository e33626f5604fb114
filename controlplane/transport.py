"""How ``stanch-cp`` serves: mTLS by default, plaintext only with ``--insecure``.

Two ports, because grpcio can either require a client certificate or not ask for one at all
(``require_client_auth=False`` never requests it, so a "maybe" port would see no agent's
certificate):

- ``--listen`` (default 127.0.0.1:7443): mutual TLS. Every connection presents a certificate
  issued by the fleet CA (``--client-ca``): agents (``stanch://host/<id>``) for Fleet.Connect,
  FetchBundle and Enrollment.Renew, operators (``stanch://operator/<name>``) for opsctl.
- ``--enroll-listen`` (default: the same address, port + 1): server-authenticated TLS, no client
  certificate. Agents without a certificate call Enrollment.Enroll here, and opsctl may call the
  Admin API here with a bearer token. Every agent call that needs a host identity is refused on
  this port (``identity.admit`` finds no certificate).

``--pki-dir DIR`` (what ``opsctl pki init --dir DIR`` wrote) stands for ``--tls-cert
DIR/server.crt --tls-key DIR/server.key --client-ca DIR/ca.crt --ca-key DIR/ca.key``. Without
the CA key the control plane serves mTLS but cannot enroll or renew.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.duration import parse_duration
from agent.errors import StanchError
from agent.fleet.tls import enrollment_address
from controlplane.pki import Authority, PkiError, PkiPaths
from controlplane.pki_issue import HOST_LIFETIME as HOST_LIFETIME
from controlplane.ratelimit import EnrollLimits, Rate

NO_TLS = (
    "no TLS material: pass --pki-dir DIR (create it with `opsctl pki init --dir DIR`), or "
    "--tls-cert, --tls-key and --client-ca; or --insecure to serve plaintext on a trusted "
    "network (development only)"
)


class TransportError(StanchError):
    """The TLS flags name files that cannot be used, or contradict each other."""


@dataclass(frozen=True)
class Tls:
    cert_chain: bytes
    key: bytes
    client_ca: bytes
    enroll_listen: str
    ca: Authority | None = None
    """Present when the CA key is: enrollment and renewal need it."""
    cert_lifetime: float = HOST_LIFETIME
    limits: EnrollLimits = EnrollLimits()

    def mtls(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=True,
        )

    def server_only(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert_chain)])


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("transport security (mTLS; see docs/control-plane.md)")
    g.add_argument("--pki-dir", type=Path, help="the directory `opsctl pki init` wrote")
    g.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    g.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    g.add_argument("--client-ca", type=Path, help="CA that signs agent/operator certificates")
    g.add_argument("--ca-key", type=Path, help="that CA's key: enables enrollment and renewal")
    g.add_argument(
        "--enroll-listen", metavar="HOST:PORT", help="enrollment port (default: --listen port+1)"
    )
    g.add_argument(
        "--cert-lifetime", type=_duration, default=HOST_LIFETIME, help="host certificates (7d)"
    )
    g.add_argument(
        "--enroll-rate",
        type=float,
        default=EnrollLimits().per_peer.per_second * 60,
        help="enrollment attempts per minute per source address (10)",
    )
    g.add_argument("--enroll-burst", type=int, default=int(EnrollLimits().per_peer.burst))


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TransportError(f"{flag} {path}: {exc.strerror}") from None


def from_args(args: argparse.Namespace) -> Tls | None:
    """The TLS settings the flags describe; None when they name no TLS material at all."""
    cert, key, client_ca, ca_key = args.tls_cert, args.tls_key, args.client_ca, args.ca_key
    if args.pki_dir is not None:
        paths = PkiPaths(args.pki_dir)
        cert, key = cert or paths.server_cert, key or paths.server_key
        client_ca = client_ca or paths.ca_cert
        if ca_key is None and paths.ca_key.exists():
            ca_key = paths.ca_key
    given = [
        f for f, v in (("--tls-cert", cert), ("--tls-key", key), ("--client-ca", client_ca)) if v
    ]
    if not given:
        return None
    if args.insecure:
        raise TransportError(f"--insecure and {given[0]} contradict each other; pick one")
    if len(given) < 3:
        raise TransportError("--tls-cert, --tls-key and --client-ca go together (or --pki-dir)")
    ca = None
    if ca_key is not None:
        try:
            ca = Authority.load(client_ca, ca_key)
        except PkiError as exc:
            raise TransportError(str(exc)) from None
    per_peer = Rate(args.enroll_rate / 60.0, args.enroll_burst)
    return Tls(
        cert_chain=_read(cert, "--tls-cert"),
        key=_read(key, "--tls-key"),
        client_ca=_read(client_ca, "--client-ca"),
        enroll_listen=args.enroll_listen or enrollment_address(args.listen),
        ca=ca,
        cert_lifetime=args.cert_lifetime,
        limits=EnrollLimits(per_peer=per_peer),
    )
