"""``opsctl``: the operator's command line. Each command group registers itself here.

A group is a module with ``register(subparsers)`` whose commands set ``args.func`` (returning the
exit status). Errors the code raises on purpose (``StanchError``) are printed as one line, never
as a traceback: 1 when something was refused, 2 when the command could not run. Control-plane
commands read ``STANCH_ADDR`` and ``STANCH_TOKEN``, and import grpc only when they run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from agent.bundle.rejection import BundleRejected
from agent.errors import StanchError
from controlplane import (
    approvals_cli,
    audit_cli,
    bundle_cli,
    fleet_cli,
    pause_cli,
    pki_cli,
    rollout_cli,
    token_cli,
    trust_cli,
)
from controlplane.admin_client import ApiError

GROUPS: tuple[Callable[[Any], None], ...] = (
    trust_cli.register,
    bundle_cli.register,
    rollout_cli.register,
    fleet_cli.register,
    pause_cli.register,
    pki_cli.register,
    approvals_cli.register,
    token_cli.register,
    audit_cli.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opsctl",
        description="Stanch operator commands: keys, signed policy bundles, rollouts, the fleet.",
    )
    subparsers = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    for register in GROUPS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except ApiError as exc:  # the control plane's own message, and its exit status
        print(f"opsctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except BundleRejected as exc:
        print(f"opsctl: {exc}", file=sys.stderr)
        return 1
    except StanchError as exc:
        print(f"opsctl: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"opsctl: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C on --watch: stop quietly, as kubectl does
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
