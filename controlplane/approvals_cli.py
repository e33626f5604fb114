"""``opsctl approvals list|approve|reject``: remediations waiting in ``approve`` mode, decided
from the centre.

``opsctl approvals list`` shows every approval an agent is waiting for (host, policy, what it
wants to run, the values it saw, when the request expires). ``opsctl approvals approve HOST
POLICY`` (or the approval id instead of the policy) sends a decision signed by the control plane
to that host's live stream and waits a few seconds for the agent's answer; a host that is not
connected is refused, never queued. ``--ttl`` bounds how long the signed decision stays valid
(default 5m), ``--reason`` goes on the record next to who decided.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.duration import parse_duration
from controlplane.admin_client import AdminClient, add_connection_args, operator
from controlplane.errors import InvalidRequest
from controlplane.output import add_output_arg, ago, emit, message_dict, stamp, table

OK = 0
UNCONFIRMED = 3
"""Sent, but the agent's answer did not arrive within the wait (check ``approvals list``)."""


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("approvals", help="remediations waiting for a human")
    cmds = group.add_subparsers(dest="approvals_command", required=True, metavar="COMMAND")
    listing = cmds.add_parser("list", help="pending approvals across the fleet")
    listing.add_argument("--host", default="", help="only this host")
    listing.add_argument("--policy", default="", help="only this policy")
    _common(listing)
    listing.set_defaults(func=cmd_list)
    for name in ("approve", "reject"):
        cmd = cmds.add_parser(name, help=f"{name} a pending remediation on one host")
        cmd.add_argument("host")
        cmd.add_argument("policy", help="the policy name, or the approval id")
        cmd.add_argument("--ttl", default="", help="validity of the signed decision (5m)")
        cmd.add_argument("--reason", default="", help="kept with the decision")
        _common(cmd)
        cmd.set_defaults(func=cmd_decide, approve=name == "approve")


def _common(parser: argparse.ArgumentParser) -> None:
    add_connection_args(parser)
    add_output_arg(parser)


def _observed(text: str) -> str:
    try:
        values = json.loads(text) if text else {}
    except ValueError:
        return text
    if not isinstance(values, dict):
        return text
    return ", ".join(f"{k}={_short(v)}" for k, v in sorted(values.items())) or "-"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        inner = ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
        return f"{{{inner}}}"
    return str(value)


def _rows(approvals: Any) -> str:
    if not approvals:
        return "no pending approvals"
    rows = [
        [
            a.host_id,
            a.policy,
            a.approval_id,
            ago(a.created_at),
            stamp(a.expires_at),
            "yes" if a.connected else "no",
            _observed(a.observed_json),
            a.message,
        ]
        for a in approvals
    ]
    headers = ["host", "policy", "id", "age", "expires", "connected", "observed", "message"]
    return table(headers, rows)


def cmd_list(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    request = admin_pb2.ListApprovalsRequest(host=args.host, policy=args.policy)
    found = AdminClient.from_args(args).call("ListApprovals", request)
    emit([message_dict(a) for a in found.approvals], args.output, lambda: _rows(found.approvals))
    return OK


def cmd_decide(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    try:
        ttl = parse_duration(args.ttl) if args.ttl else 0.0
    except ValueError as exc:
        raise InvalidRequest(f"--ttl: {exc}") from None
    request = admin_pb2.DecideApprovalRequest(
        host=args.host,
        policy=args.policy,
        approve=args.approve,
        reason=args.reason,
        ttl_seconds=ttl,
        by=operator(),
    )
    client = AdminClient.from_args(args)
    # The server waits up to 10 s for the agent's answer: give the call room for that.
    client.timeout = max(client.timeout, 20.0)
    done = client.call("DecideApproval", request)
    verb = "approved" if args.approve else "rejected"
    emit(
        message_dict(done),
        args.output,
        lambda: (
            f"{verb} {done.policy} on {done.host_id} (approval {done.approval_id}) as {done.by}"
            + ("" if done.confirmed else f"; not confirmed yet: {done.message}")
        ),
    )
    return OK if done.confirmed else UNCONFIRMED
