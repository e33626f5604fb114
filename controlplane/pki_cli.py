"""``opsctl pki init|issue-operator|token|certs|revoked|revoke-cert`` and ``opsctl agents
revoke|unrevoke``.

``init`` and ``issue-operator`` are offline: they read and write the CA directory (keep it on
the control plane's host, ``ca.key`` 0600). ``issue-operator`` prints the new certificate's
serial, which ``revoke-cert`` takes. The others call the running control plane (``Pki``
service, role admin).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from agent.duration import parse_duration
from agent.fleet.tls import write_private
from controlplane.admin_client import AdminClient, add_connection_args, operator
from controlplane.auth import ROLES
from controlplane.errors import InvalidRequest
from controlplane.output import add_output_arg, emit, message_dict, stamp, table
from controlplane.pki import DEFAULT_SANS, Authority, PkiPaths, init_pki
from controlplane.pki_issue import OPERATOR_LIFETIME, issue_operator

OK = 0


def register(subparsers: Any) -> None:
    pki = subparsers.add_parser("pki", help="the fleet CA: mTLS for agents and operators")
    cmds = pki.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")
    init = cmds.add_parser("init", help="create the CA and the control plane's certificate")
    init.add_argument("--dir", required=True, type=Path, help="where to write (kept private)")
    init.add_argument(
        "--san",
        action="append",
        help=f"a DNS name or IP of the control plane (repeat; default {', '.join(DEFAULT_SANS)})",
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=cmd_init)

    op = cmds.add_parser("issue-operator", help="a client certificate for opsctl, with a role")
    op.add_argument("name")
    op.add_argument("--role", required=True, choices=ROLES)
    op.add_argument("--dir", required=True, type=Path, help="the CA directory (pki init)")
    op.add_argument("--out", type=Path, help="where NAME.crt and NAME.key go (default: --dir)")
    op.add_argument("--valid", default=f"{OPERATOR_LIFETIME / 86400:g}d", help="lifetime (90d)")
    op.set_defaults(func=cmd_issue_operator)

    token = cmds.add_parser("token", help="a single-use enrollment token for an agent")
    token.add_argument("--host", default="", help="bind it to this host id (recommended)")
    token.add_argument("--valid", default="1h", help="how long it can be used (1h; at most 7d)")
    _common(token)
    token.set_defaults(func=cmd_token)

    certs = cmds.add_parser("certs", help="certificates issued to hosts")
    certs.add_argument("--host", default="")
    _common(certs)
    certs.set_defaults(func=cmd_certs)

    revoked = cmds.add_parser("revoked", help="hosts cut off by `agents revoke`")
    _common(revoked)
    revoked.set_defaults(func=cmd_revoked)

    cut = cmds.add_parser(
        "revoke-cert", help="refuse one certificate (serial) or an operator's (--operator)"
    )
    cut.add_argument("serial", nargs="?", default="", help="hex, as issue-operator printed it")
    cut.add_argument(
        "--operator", default="", help="refuse every certificate of NAME issued until now"
    )
    cut.add_argument("--reason", default="", help="recorded with the revocation")
    _common(cut)
    cut.set_defaults(func=cmd_revoke_cert)


def add_revoke(agent_cmds: Any) -> None:
    """``opsctl agents revoke HOST [--reason]`` (registered by ``fleet_cli``)."""
    revoke = agent_cmds.add_parser("revoke", help="cut a host off now and refuse it from now on")
    revoke.add_argument("host")
    revoke.add_argument("--reason", default="", help="recorded with the revocation")
    _common(revoke)
    revoke.set_defaults(func=cmd_revoke)


def add_unrevoke(agent_cmds: Any) -> None:
    """``opsctl agents unrevoke HOST`` (registered by ``fleet_cli``)."""
    lift = agent_cmds.add_parser(
        "unrevoke", help="let a revoked host enroll again (its old certificates stay revoked)"
    )
    lift.add_argument("host")
    _common(lift)
    lift.set_defaults(func=cmd_unrevoke)


def _common(parser: argparse.ArgumentParser) -> None:
    add_connection_args(parser)
    add_output_arg(parser)


def _duration(text: str, flag: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InvalidRequest(f"{flag} {text!r}: {exc}") from None


def cmd_init(args: argparse.Namespace) -> int:
    paths = init_pki(args.dir, args.san or list(DEFAULT_SANS), time.time(), args.force)
    print(f"CA:     {paths.ca_cert} (key {paths.ca_key}, mode 0600: keep it private)")
    print(f"server: {paths.server_cert} (key {paths.server_key})")
    print(f"start:  stanch-cp --pki-dir {paths.directory} ...")
    return OK


def cmd_issue_operator(args: argparse.Namespace) -> int:
    paths = PkiPaths(args.dir)
    ca = Authority.load(paths.ca_cert, paths.ca_key)
    lifetime = _duration(args.valid, "--valid")
    try:
        key, issued = issue_operator(ca, args.name, args.role, time.time(), lifetime)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    out = args.out or args.dir
    write_private(out / f"{args.name}.key", key)
    write_private(out / f"{args.name}.crt", issued.pem)
    print(f"{out / (args.name + '.crt')} ({args.role}, until {stamp(issued.not_after)})")
    print(f"serial: {issued.serial} (opsctl pki revoke-cert {issued.serial})")
    print(f"use:    STANCH_CA={paths.ca_cert} STANCH_CERT={out / (args.name + '.crt')} ", end="")
    print(f"STANCH_KEY={out / (args.name + '.key')} opsctl ...")
    return OK


def cmd_token(args: argparse.Namespace) -> int:
    from stanch.v1 import pki_pb2

    ttl = _duration(args.valid, "--valid")
    request = pki_pb2.CreateEnrollmentTokenRequest(
        host_id=args.host, ttl_seconds=ttl, by=operator()
    )
    found = AdminClient.from_args(args).pki("CreateEnrollmentToken", request)
    emit(message_dict(found), args.output, lambda: str(found.token))
    return OK


def cmd_certs(args: argparse.Namespace) -> int:
    from stanch.v1 import pki_pb2

    found = AdminClient.from_args(args).pki(
        "ListCertificates", pki_pb2.ListCertificatesRequest(host_id=args.host)
    )
    rows = [
        [
            c.host_id,
            c.serial[:16],
            stamp(c.issued_at),
            stamp(c.not_after),
            f"revoked {stamp(c.revoked_at)}" if c.revoked_at else "valid",
        ]
        for c in found.certificates
    ]
    emit(
        message_dict(found),
        args.output,
        lambda: table(["HOST", "SERIAL", "ISSUED", "EXPIRES", "STATE"], rows),
    )
    return OK


def cmd_revoked(args: argparse.Namespace) -> int:
    from stanch.v1 import pki_pb2

    found = AdminClient.from_args(args).pki("ListRevokedHosts", pki_pb2.ListRevokedHostsRequest())
    rows = [[h.host_id, stamp(h.at), h.revoked_by, h.reason] for h in found.hosts]
    emit(message_dict(found), args.output, lambda: table(["HOST", "AT", "BY", "REASON"], rows))
    return OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from stanch.v1 import pki_pb2

    request = pki_pb2.RevokeHostRequest(host_id=args.host, reason=args.reason, by=operator())
    found = AdminClient.from_args(args).pki("RevokeHost", request)
    stream = "its stream was cut" if found.disconnected else "it was not connected"
    emit(
        message_dict(found),
        args.output,
        lambda: f"{found.host_id}: revoked ({found.certificates_revoked} certificates); {stream}",
    )
    return OK


def cmd_revoke_cert(args: argparse.Namespace) -> int:
    from stanch.v1 import pki_pb2

    if bool(args.serial) == bool(args.operator):
        raise InvalidRequest("revoke-cert: give a SERIAL or --operator NAME (exactly one)")
    request = pki_pb2.RevokeCertificateRequest(
        serial=args.serial, operator=args.operator, reason=args.reason, by=operator()
    )
    found = AdminClient.from_args(args).pki("RevokeCertificate", request)
    if found.operator:
        text = f"{found.operator}: every certificate issued until now is revoked"
    else:
        state = "revoked" if found.newly_revoked else "was already revoked"
        text = f"{found.serial} ({found.subject}): {state}"
    emit(message_dict(found), args.output, lambda: text)
    return OK


def cmd_unrevoke(args: argparse.Namespace) -> int:
    from stanch.v1 import pki_pb2

    request = pki_pb2.UnrevokeHostRequest(host_id=args.host, by=operator())
    found = AdminClient.from_args(args).pki("UnrevokeHost", request)
    emit(
        message_dict(found),
        args.output,
        lambda: (
            f"{found.host_id}: no longer revoked; enroll it again with a new token"
            f" (opsctl pki token --host {found.host_id})"
        ),
    )
    return OK
