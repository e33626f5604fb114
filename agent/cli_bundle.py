"""``stanch-agent bundle ...``: install a signed bundle, show the active one, list refusals.

``agent.cli`` calls :func:`register` to add the ``bundle`` command; each subcommand sets
``args.func``, which returns the exit status: 0 done, 1 the bundle was refused (the active bundle
is unchanged), 2 the command could not run (bad trust directory, unreadable state).
``python -m agent.cli_bundle bundle ...`` runs the same commands without the rest of the agent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "/var/lib/stanch"


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    """Defer the import of the bundle code (and ``cryptography``) until a command runs."""

    def run(args: argparse.Namespace) -> int:
        from agent.bundle import commands

        result: int = getattr(commands, name)(args)
        return result

    return run


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
    install.set_defaults(func=_lazy("cmd_install"))

    status = commands.add_parser("status", help="show the active bundle and whether it is stale")
    _state_arg(status)
    status.set_defaults(func=_lazy("cmd_status"))

    rejections = commands.add_parser("rejections", help="list recently refused bundles")
    _state_arg(rejections)
    rejections.set_defaults(func=_lazy("cmd_rejections"))

    rotate = commands.add_parser(
        "trust-update", help="accept the next trust root (signed by the current keys and its own)"
    )
    rotate.add_argument("root", type=Path, help="the next root.json")
    _trust_args(rotate)
    _state_arg(rotate)
    rotate.set_defaults(func=_lazy("cmd_trust_update"))


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stanch-agent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
