"""``opsctl audit list|verify``: read the audit log and check its hash chain (viewer role).

``opsctl audit verify`` exits 0 when every entry chains to the one before, and 1 naming the
first bad entry otherwise (an edited row, one removed from the middle, two swapped). It prints
the head as ``SEQ:HASH``: keep it somewhere else, and a later ``verify --anchor SEQ:HASH`` also
catches entries removed from the end, or a log rewritten and rehashed from that entry on.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.duration import parse_duration
from agent.errors import StanchError
from controlplane.admin_client import add_connection_args
from controlplane.output import add_output_arg, emit, message_dict, stamp, table
from controlplane.token_cli import SecurityClient

OK, BAD = 0, 1


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="the tamper-evident audit log")
    cmds = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    listing = cmds.add_parser("list", help="who changed what, newest last")
    listing.add_argument("--since", default="", help="only the last DURATION, e.g. 24h")
    listing.add_argument("--actor", default="", help="only this principal")
    listing.add_argument("--action", default="", help="only this action, e.g. rollout.start")
    listing.add_argument("--limit", type=int, default=200, help="newest N entries (200)")
    add_connection_args(listing)
    add_output_arg(listing)
    listing.set_defaults(func=cmd_list)
    verify = cmds.add_parser("verify", help="check the hash chain; exit 1 if tampered")
    verify.add_argument(
        "--anchor",
        default="",
        metavar="SEQ:HASH",
        help="a head printed by an earlier verify, kept elsewhere: also catches entries cut "
        "from the end and a log rewritten from there",
    )
    add_connection_args(verify)
    add_output_arg(verify)
    verify.set_defaults(func=cmd_verify)


def _since(text: str) -> float:
    if not text:
        return 0.0
    import time

    try:
        return time.time() - parse_duration(text)
    except ValueError as exc:
        raise StanchError(f"--since {text!r}: {exc}") from None


def _rows(entries: Any) -> str:
    rows = [
        [e.seq, stamp(e.at), f"{e.actor} ({e.role})", e.action, e.target, e.result, e.source]
        for e in entries
    ]
    return table(["seq", "at", "actor", "action", "target", "result", "source"], rows)


def cmd_list(args: argparse.Namespace) -> int:
    from stanch.v1 import security_pb2

    request = security_pb2.ListAuditRequest(
        since=_since(args.since), actor=args.actor, action=args.action, limit=max(args.limit, 0)
    )
    client = SecurityClient.from_args(args)
    try:
        response = client.call("ListAudit", request)
    finally:
        client.close()
    emit(message_dict(response), args.output, lambda: _rows(response.entries))
    return OK


def cmd_verify(args: argparse.Namespace) -> int:
    from stanch.v1 import security_pb2

    client = SecurityClient.from_args(args)
    try:
        result = client.call("VerifyAudit", security_pb2.VerifyAuditRequest(anchor=args.anchor))
    finally:
        client.close()

    def text() -> str:
        if result.ok:
            anchored = f"; anchor {args.anchor.split(':')[0]} matches" if args.anchor else ""
            return (
                f"audit log intact: {result.checked} entries{anchored}; "
                f"head {result.head_seq}:{result.head_hash} (keep it; pass it as --anchor)"
            )
        return (
            f"audit log TAMPERED at seq {result.first_bad_seq}: {result.problem} "
            f"({result.checked} entries before it are intact)"
        )

    if args.output == "table" and not result.ok:
        print(f"opsctl: {text()}", file=sys.stderr)
    else:
        emit(message_dict(result), args.output, text)
    return OK if result.ok else BAD
