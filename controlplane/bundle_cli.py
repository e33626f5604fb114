"""``opsctl bundle build|sign|verify|inspect|diff|publish``: the operator's side of signed bundles.

Exit status: 0 done, 1 refused (a policy error, a failed verification), 2 could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from agent.bundle.keys import short_id
from agent.bundle.manifest import ManifestError, format_time, parse_time
from agent.bundle.rejection import BundleRejected
from agent.bundle.trust import TrustStore
from agent.bundle.verify import verify_bundle
from agent.duration import parse_duration
from controlplane import bundle_build, bundle_review, publish_cli
from controlplane.keys import load_private_key

OK, REFUSED, FAILED = 0, 1, 2


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("bundle", help="build, sign, verify and review policy bundles")
    commands = group.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")

    build = commands.add_parser("build", help="validate policies and pack an unsigned bundle")
    build.add_argument("source", type=Path, help="directory of policies (and their scripts)")
    build.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    build.add_argument("--name", required=True, help="bundle name, e.g. web-fleet")
    build.add_argument("--version", type=int, required=True, help="monotonic version (> last)")
    build.add_argument("--expires", default="30d", help="validity, e.g. 30d or 12h (default 30d)")
    build.set_defaults(func=cmd_build)

    sign = commands.add_parser("sign", help="add signatures; writes a new <sha256>.bundle")
    sign.add_argument("file", type=Path)
    sign.add_argument("--key", type=Path, action="append", required=True, help="private key")
    sign.add_argument("-o", "--out", type=Path, help="output directory (default: the input's)")
    sign.add_argument("--passphrase-env", metavar="VAR", help="read the key passphrase from $VAR")
    sign.set_defaults(func=cmd_sign)

    verify = commands.add_parser("verify", help="verify as an agent would")
    verify.add_argument("file", type=Path)
    _trust_args(verify, required=True)
    verify.add_argument("--at", help="verify as of this RFC 3339 time (default: now)")
    verify.set_defaults(func=cmd_verify)

    inspect = commands.add_parser("inspect", help="files, version, expiry and signers")
    inspect.add_argument("file", type=Path)
    _trust_args(inspect, required=False)
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_inspect)

    diff = commands.add_parser("diff", help="which policies a new bundle adds, removes, changes")
    diff.add_argument("old", type=Path)
    diff.add_argument("new", type=Path)
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=cmd_diff)

    publish_cli.add_publish(commands)


def _trust_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--trust", type=Path, required=required, help="root.json or *.pub dir")
    parser.add_argument("--threshold", type=int, help="signatures required (with *.pub pins)")


def cmd_build(args: argparse.Namespace) -> int:
    try:
        lifetime = parse_duration(args.expires)
    except ValueError as exc:
        return _usage(f"--expires: {exc}")
    now = time.time()
    try:
        bundle = bundle_build.build(args.source, args.name, args.version, now, now + lifetime)
    except bundle_build.BuildError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"opsctl: bundle not built: {len(exc.errors)} error(s)", file=sys.stderr)
        return REFUSED
    args.out.mkdir(parents=True, exist_ok=True)
    path = bundle.write(args.out)
    m = bundle.manifest
    print(
        f"built {path} ({m.name} v{m.version}, {len(m.policies)} policies, "
        f"{len(m.files)} files, expires {format_time(m.expires)}; unsigned)"
    )
    return OK


def cmd_sign(args: argparse.Namespace) -> int:
    passphrase = None
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if value is None:
            return _usage(f"--passphrase-env: ${args.passphrase_env} is not set")
        passphrase = value.encode()
    keys = [load_private_key(path, passphrase) for path in args.key]
    bundle = bundle_build.sign(bundle_build.read(args.file), keys, time.time())
    path = bundle.write(args.out or args.file.parent)
    ids = ", ".join(short_id(s.keyid) for s in bundle.envelope.signatures)
    print(f"signed {path} ({bundle.manifest.name} v{bundle.manifest.version}; signatures: {ids})")
    return OK


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        at = parse_time(args.at, "--at") if args.at else time.time()
    except ManifestError as exc:
        return _usage(str(exc))
    trust = TrustStore.load(args.trust, args.threshold)
    try:
        verified = verify_bundle(args.file.read_bytes(), trust, at)
    except BundleRejected as exc:
        print(f"{args.file}: rejected ({exc.reason}): {exc.message}", file=sys.stderr)
        return REFUSED
    m = verified.manifest
    signers = ", ".join(short_id(s) for s in sorted(verified.signers))
    print(
        f"{args.file}: OK {m.name} v{m.version}, {len(verified.signers)} of "
        f"{trust.threshold} required signatures ({signers}), "
        f"expires {format_time(m.expires)}"
    )
    return OK


def cmd_inspect(args: argparse.Namespace) -> int:
    bundle = bundle_build.read(args.file)
    trust = TrustStore.load(args.trust, args.threshold) if args.trust else None
    doc = bundle_review.inspect_doc(bundle, trust, time.time())
    print(json.dumps(doc, indent=2) if args.json else bundle_review.render_inspect(doc))
    return OK


def cmd_diff(args: argparse.Namespace) -> int:
    old, new = bundle_build.read(args.old), bundle_build.read(args.new)
    result = bundle_review.diff(old, new)
    if args.json:
        print(json.dumps(result.__dict__, indent=2))
    else:
        sys.stdout.write(bundle_review.render_diff(result, old, new))
    return OK


def _usage(message: str) -> int:
    print(f"opsctl: {message}", file=sys.stderr)
    return FAILED
