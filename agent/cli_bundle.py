"""``stanch-agent bundle ...``: install a signed bundle, show the active one, list refusals.

``agent.cli`` calls :func:`register` to add the ``bundle`` command; each subcommand sets
``args.func``, which returns the exit status: 0 done, 1 the bundle was refused (the active bundle
is unchanged), 2 the command could not run (bad trust directory, unreadable state).
``python -m agent.cli_bundle bundle ...`` runs the same commands without the rest of the agent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.bundle import BundleRejected, BundleStore, TrustStore, read_rejections
from agent.bundle.keys import short_id
from agent.bundle.manifest import format_time
from agent.clock import SystemClock
from agent.errors import StanchError

OK, REJECTED, FAILED = 0, 1, 2
DEFAULT_STATE_DIR = "/var/lib/stanch"


def register(subparsers: Any) -> None:
    """Add ``bundle`` and its subcommands to an ``argparse`` subparsers object."""
    bundle = subparsers.add_parser("bundle", help="install and inspect signed policy bundles")
    commands = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")

    install = commands.add_parser("install", help="verify a bundle and make it active")
    install.add_argument("file", type=Path, help="the bundle file (<sha256>.bundle)")
    _trust_args(install)
    _state_arg(install)
    install.add_argument(
        "--allow-rollback",
        action="store_true",
        help="accept a version older than the newest this host ran (a deliberate rollback)",
    )
    install.add_argument(
        "--allow-rename", action="store_true", help="let a bundle with another name replace it"
    )
    install.set_defaults(func=cmd_install)

    status = commands.add_parser("status", help="show the active bundle and whether it is stale")
    _state_arg(status)
    status.set_defaults(func=cmd_status)

    rejections = commands.add_parser("rejections", help="list recently refused bundles")
    _state_arg(rejections)
    rejections.set_defaults(func=cmd_rejections)

    rotate = commands.add_parser(
        "trust-update", help="accept the next trust root (signed by the current keys and its own)"
    )
    rotate.add_argument("root", type=Path, help="the next root.json")
    _trust_args(rotate)
    _state_arg(rotate)
    rotate.set_defaults(func=cmd_trust_update)


def _trust_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust", type=Path, required=True, help="pinned keys: root.json or *.pub files"
    )
    parser.add_argument(
        "--threshold", type=int, help="signatures required with *.pub pins (default 1)"
    )


def _state_arg(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an absent flag must not overwrite ``stanch-agent --state-dir X bundle ...``.
    parser.add_argument(
        "--state-dir",
        default=argparse.SUPPRESS,
        help=f"the agent's state dir (default: $STANCH_STATE_DIR or {DEFAULT_STATE_DIR})",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def state_dir(args: argparse.Namespace) -> Path:
    chosen = getattr(args, "state_dir", None) or os.environ.get("STANCH_STATE_DIR")
    return Path(chosen or DEFAULT_STATE_DIR)


def cmd_install(args: argparse.Namespace) -> int:
    store = BundleStore(state_dir(args))
    try:
        trust = TrustStore.load(args.trust, args.threshold)
        done = store.install(
            args.file,
            trust,
            SystemClock().now(),
            allow_rollback=args.allow_rollback,
            allow_rename=args.allow_rename,
        )
    except BundleRejected as exc:
        if args.json:
            _emit(args, {"installed": False, "reason": str(exc.reason), "message": exc.message})
        print(f"stanch-agent: {exc}; the active bundle is unchanged", file=sys.stderr)
        return REJECTED
    except StanchError as exc:
        return _fail(exc)
    verb = "activated" if done.changed else "already active:"
    text = f"{verb} {done.name} v{done.version} ({done.digest})"
    _emit(args, {"installed": True, **asdict(done)}, text)
    return OK


def cmd_status(args: argparse.Namespace) -> int:
    try:
        status = BundleStore(state_dir(args)).active_status()
    except StanchError as exc:
        return _fail(exc)
    if status is None:
        _emit(args, {"active": None}, "no bundle active")
        return OK
    doc = {"active": {**asdict(status), "policy_dir": str(status.policy_dir)}}
    stale = "  STALE: expired, still running until a fresh bundle arrives" if status.stale else ""
    text = (
        f"{status.name} v{status.version}  {status.digest}\n"
        f"  created {format_time(status.created)}  expires {format_time(status.expires)}{stale}\n"
        f"  activated {format_time(status.activated_at)}  signed by "
        f"{', '.join(short_id(s) for s in status.signers)}\n"
        f"  policies: {status.policy_dir}"
    )
    _emit(args, doc, text)
    return OK


def cmd_rejections(args: argparse.Namespace) -> int:
    records = read_rejections(state_dir(args))
    lines = [f"{format_time(r.at)}  {r.reason}  {r.file}: {r.message}" for r in records]
    _emit(args, {"rejections": [asdict(r) for r in records]}, "\n".join(lines) or "none")
    return OK


def cmd_trust_update(args: argparse.Namespace) -> int:
    try:
        base = TrustStore.load(args.trust, args.threshold)
        new = BundleStore(state_dir(args)).update_root(args.root, base)
    except StanchError as exc:
        return _fail(exc)
    doc = {"version": new.version, "threshold": new.threshold, "keys": sorted(new.keys)}
    _emit(args, doc, f"trust root v{new.version}: {len(new.keys)} keys, threshold {new.threshold}")
    return OK


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str = "") -> None:
    print(json.dumps(doc, sort_keys=True, default=str) if args.json else text)


def _fail(exc: StanchError) -> int:
    print(f"stanch-agent: {exc}", file=sys.stderr)
    return FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stanch-agent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
