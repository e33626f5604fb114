"""``opsctl bundle publish BUNDLE``: upload a signed bundle to the control plane.

The control plane verifies it against the operator keys it trusts, exactly as an agent would, and
refuses an unsigned, tampered, expired or older bundle with the agent's reason code. Publishing
the same bytes twice is harmless (reported as already published).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.bundle.manifest import format_time
from controlplane.admin_client import AdminClient, add_connection_args
from controlplane.output import add_output_arg, emit, message_dict

OK = 0


def add_publish(commands: Any) -> None:
    publish = commands.add_parser("publish", help="upload a signed bundle to the control plane")
    publish.add_argument("file", type=Path)
    add_connection_args(publish)
    add_output_arg(publish)
    publish.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    data = args.file.read_bytes()
    info = AdminClient.from_args(args).call(
        "PublishBundle", admin_pb2.PublishBundleRequest(data=data)
    )
    for warning in info.warnings:
        print(f"opsctl: warning: {warning}", file=sys.stderr)
    verb = "already published" if info.already_published else "published"
    emit(
        message_dict(info),
        args.output,
        lambda: (
            f"{verb} {info.name} v{info.version} {info.digest} "
            f"(signed by {len(info.signers)} trusted key(s), expires {format_time(info.expires)})"
        ),
    )
    return OK
