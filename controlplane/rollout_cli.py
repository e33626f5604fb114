"""``opsctl rollout policy|status|list|pause|resume|abort``: staged rollouts from the terminal.

``rollout policy BUNDLE`` accepts a bundle file (published first; publishing is idempotent) or the
digest of one already published. ``rollout status --watch`` polls until the rollout ends and exits
0 when it completed, 1 when it was rolled back or aborted, 2 when it could not ask: a CI job
can gate on it. On a terminal the status block is redrawn in place; elsewhere one line is
printed per change, which reads well in CI logs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from agent.duration import parse_duration
from controlplane import rollout_view
from controlplane.admin_client import AdminClient, add_connection_args, operator
from controlplane.errors import InvalidRequest
from controlplane.output import add_output_arg, emit, message_dict
from controlplane.selectors import parse_selector

OK, REFUSED, FAILED = 0, 1, 2


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("rollout", help="staged rollouts of a published bundle")
    commands = group.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")

    start = commands.add_parser("policy", help="roll a bundle out in waves")
    start.add_argument("bundle", help="a .bundle file, or the digest of a published bundle")
    target = start.add_mutually_exclusive_group(required=True)
    target.add_argument("--selector", "-l", action="append", help="hosts, e.g. env=prod")
    target.add_argument("--all-hosts", action="store_true", help="every host (no selector)")
    start.add_argument("--waves", default="1,5%,25%,100%", help="cumulative (1,5%%,25%%,100%%)")
    start.add_argument("--bake", default="10m", help="bake time per wave (10m)")
    start.add_argument("--gate", action="append", default=[], metavar="NAME=VALUE")
    start.add_argument("--gate-mode", action="append", default=[], metavar="NAME=observe")
    start.add_argument("--watch", "-w", action="store_true", help="then watch it (as status -w)")
    _common(start)
    start.set_defaults(func=cmd_policy)

    status = commands.add_parser("status", help="waves and gates of a rollout (newest default)")
    status.add_argument("id", nargs="?", default="")
    status.add_argument("--watch", "-w", action="store_true", help="follow until it ends")
    status.add_argument("--interval", default="2s", help="poll interval with --watch (2s)")
    status.add_argument("--timeout", default="0s", help="give up watching after this (0: never)")
    _common(status)
    status.set_defaults(func=cmd_status)

    listing = commands.add_parser("list", help="rollouts, oldest first")
    listing.add_argument("--active", action="store_true", help="only running or paused")
    _common(listing)
    listing.set_defaults(func=cmd_list)

    for action, text in (
        ("pause", "stop progressing (gates still watch)"),
        ("resume", "continue (the current wave's bake starts over)"),
        ("abort", "stop and roll updated hosts back"),
    ):
        cmd = commands.add_parser(action, help=text)
        cmd.add_argument("id")
        cmd.add_argument("--reason", default="")
        _common(cmd)
        cmd.set_defaults(func=cmd_control, action=action)


def _common(parser: argparse.ArgumentParser) -> None:
    add_connection_args(parser)
    add_output_arg(parser)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidRequest(f"{flag} {item!r}: expected NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def cmd_policy(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    client = AdminClient.from_args(args)
    ref = args.bundle
    path = Path(ref)
    if path.is_file():
        info = client.call("PublishBundle", admin_pb2.PublishBundleRequest(data=path.read_bytes()))
        note = "already published" if info.already_published else "published"
        print(f"{note} {info.name} v{info.version} ({info.digest[:12]})", file=sys.stderr)
        ref = info.digest
    try:
        bake = parse_duration(args.bake)
    except ValueError as exc:
        raise InvalidRequest(f"--bake: {exc}") from None
    request = admin_pb2.StartRolloutRequest(
        bundle=ref,
        selector={} if args.all_hosts else parse_selector(args.selector),
        waves=[args.waves],
        bake_seconds=bake,
        gates=_pairs(args.gate, "--gate"),
        gate_modes=_pairs(args.gate_mode, "--gate-mode"),
        by=operator(),
    )
    rollout = client.call("StartRollout", request)
    if args.watch:
        args.id, args.interval, args.timeout = rollout.id, "2s", "0s"
        return _watch(client, args)
    emit(message_dict(rollout), args.output, lambda: f"started {rollout_view.summary(rollout)}")
    return OK


def cmd_status(args: argparse.Namespace) -> int:
    client = AdminClient.from_args(args)
    if args.watch:
        return _watch(client, args)
    rollout = _get(client, args.id)
    emit(message_dict(rollout), args.output, lambda: rollout_view.status_block(rollout))
    return OK


def _get(client: AdminClient, rollout_id: str) -> Any:
    from stanch.v1 import admin_pb2

    return client.call("GetRollout", admin_pb2.GetRolloutRequest(id=rollout_id))


def _watch(client: AdminClient, args: argparse.Namespace) -> int:
    interval = max(0.2, parse_duration(args.interval))
    timeout = parse_duration(args.timeout)
    deadline = time.monotonic() + timeout if timeout else None
    live = sys.stdout.isatty() and args.output == "table"
    last = ""
    rollout_id = args.id
    while True:
        rollout = _get(client, rollout_id)
        rollout_id = rollout.id  # the newest rollout stays the one we started watching
        if args.output != "table":
            text = rollout_view.summary(rollout)
            if text != last:
                emit(message_dict(rollout), args.output, lambda: "")
        elif live:
            sys.stdout.write("\x1b[H\x1b[J" + rollout_view.status_block(rollout) + "\n")
            sys.stdout.flush()
            text = ""
        else:
            text = rollout_view.summary(rollout)
            if text != last:
                print(text, flush=True)
        last = text
        if rollout.state in rollout_view.TERMINAL:
            return rollout_view.TERMINAL[rollout.state]
        if deadline is not None and time.monotonic() >= deadline:
            print(
                f"opsctl: rollout {rollout.id} still {rollout.state}; stopped watching",
                file=sys.stderr,
            )
            return FAILED
        time.sleep(interval)


def cmd_list(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    client = AdminClient.from_args(args)
    found = client.call("ListRollouts", admin_pb2.ListRolloutsRequest(active_only=args.active))
    doc = [message_dict(r) for r in found.rollouts]
    emit(doc, args.output, lambda: rollout_view.list_table(found.rollouts))
    return OK


def cmd_control(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    client = AdminClient.from_args(args)
    request = admin_pb2.ControlRolloutRequest(
        id=args.id, action=args.action, reason=args.reason, by=operator()
    )
    rollout = client.call("ControlRollout", request)
    emit(message_dict(rollout), args.output, lambda: rollout_view.summary(rollout))
    return OK
