"""``opsctl pause|resume``, ``opsctl pauses list``: the kill switch, from the centre.

``opsctl pause --policy P --for 1h`` stops policy P on every connected agent within a message
round trip; ``-l env=prod`` narrows it to matching hosts; no ``--policy`` stops every policy.
Hosts that connect later get it on their next Hello. ``--for`` is a TTL: the pause lifts by
itself, on the agents too, even if the control plane is down by then.
"""

from __future__ import annotations

import argparse
from typing import Any

from agent.duration import parse_duration
from controlplane.admin_client import AdminClient, add_connection_args, operator
from controlplane.errors import InvalidRequest
from controlplane.output import add_output_arg, emit, labels_text, message_dict, stamp, table
from controlplane.selectors import parse_selector

OK = 0


def register(subparsers: Any) -> None:
    pause = subparsers.add_parser("pause", help="stop automation centrally (kill switch)")
    pause.add_argument("--policy", default="", help="one policy (default: every policy)")
    pause.add_argument("-l", "--selector", action="append", help="only hosts matching k=v")
    pause.add_argument("--for", dest="duration", default="", help="TTL, e.g. 1h (default: none)")
    pause.add_argument("--reason", default="", help="shown in explain and on every agent")
    _common(pause)
    pause.set_defaults(func=cmd_pause)

    resume = subparsers.add_parser("resume", help="lift a central pause")
    resume.add_argument("--policy", default="")
    resume.add_argument("-l", "--selector", action="append")
    _common(resume)
    resume.set_defaults(func=cmd_resume)

    pauses = subparsers.add_parser("pauses", help="central pauses in force")
    pause_cmds = pauses.add_subparsers(dest="pauses_command", required=True, metavar="COMMAND")
    listing = pause_cmds.add_parser("list", help="active pauses")
    _common(listing)
    listing.set_defaults(func=cmd_list)


def _common(parser: argparse.ArgumentParser) -> None:
    add_connection_args(parser)
    add_output_arg(parser)


def _rows(pauses: Any) -> str:
    rows = [
        [
            p.id,
            p.scope,
            labels_text(p.selector) if p.selector else "(all hosts)",
            stamp(p.until) if p.until else "until resumed",
            p.by,
            p.reason,
        ]
        for p in pauses
    ]
    return table(["id", "scope", "hosts", "until", "by", "reason"], rows)


def cmd_pause(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    try:
        seconds = parse_duration(args.duration) if args.duration else 0.0
    except ValueError as exc:
        raise InvalidRequest(f"--for: {exc}") from None
    request = admin_pb2.PauseRequest(
        policy=args.policy,
        selector=parse_selector(args.selector),
        for_seconds=seconds,
        reason=args.reason or "paused with opsctl",
        by=operator(),
    )
    found = AdminClient.from_args(args).call("Pause", request)
    emit(
        message_dict(found),
        args.output,
        lambda: (
            f"paused {args.policy or 'every policy'}; reached {found.reached} connected "
            f"agent(s)\n" + _rows(found.pauses)
        ),
    )
    return OK


def cmd_resume(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    request = admin_pb2.ResumeRequest(
        policy=args.policy, selector=parse_selector(args.selector), by=operator()
    )
    found = AdminClient.from_args(args).call("Resume", request)
    emit(
        message_dict(found),
        args.output,
        lambda: (
            f"resumed {args.policy or 'every policy'}: cleared {len(found.pauses)} "
            f"pause(s); reached {found.reached} connected agent(s)"
        ),
    )
    return OK


def cmd_list(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    found = AdminClient.from_args(args).call("ListPauses", admin_pb2.ListPausesRequest())
    emit([message_dict(p) for p in found.pauses], args.output, lambda: _rows(found.pauses))
    return OK
