"""``opsctl keys generate`` and ``opsctl root init|sign|verify``: operator keys and trust roots.

A key rotation, end to end::

    opsctl keys generate keys/release-4
    opsctl root init --key keys/release-2.pub --key keys/release-3.pub \\
        --key keys/release-4.pub --threshold 2 --version 2 -o root.2.json
    opsctl root sign root.2.json --key keys/release-1.key --key keys/release-2.key  # old root
    opsctl root sign root.2.json --key keys/release-3.key --key keys/release-4.key  # new root
    opsctl root verify root.2.json --previous root.json
    # then ship root.2.json: stanch-agent bundle trust-update root.2.json ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from agent.bundle.dsse import Envelope
from agent.bundle.durable import write_atomic
from agent.bundle.keys import key_id, load_public_key, short_id
from agent.bundle.trust import ROOT_PAYLOAD_TYPE, TrustError, read_envelope, root_payload
from agent.bundle.trust import trust_from_root as verify_root
from controlplane.keys import generate, load_private_key, sign

OK, REFUSED, FAILED = 0, 1, 2


def register(subparsers: Any) -> None:
    keys = subparsers.add_parser("keys", help="operator signing keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    gen = key_commands.add_parser("generate", help="write PATH.key (0600) and PATH.pub")
    gen.add_argument("path", type=Path, help="e.g. keys/release-1")
    gen.add_argument("--passphrase-env", metavar="VAR", help="encrypt with the passphrase in $VAR")
    gen.set_defaults(func=cmd_generate)

    root = subparsers.add_parser("root", help="signed trust roots (key rotation)")
    root_commands = root.add_subparsers(dest="root_command", required=True, metavar="COMMAND")
    init = root_commands.add_parser("init", help="write an unsigned trust root")
    init.add_argument("--key", type=Path, action="append", required=True, help="a .pub to trust")
    init.add_argument("--threshold", type=int, required=True)
    init.add_argument("--version", type=int, required=True, help="previous root's version + 1")
    init.add_argument("-o", "--out", type=Path, required=True)
    init.set_defaults(func=cmd_root_init)

    sign_root = root_commands.add_parser("sign", help="add signatures to a trust root, in place")
    sign_root.add_argument("root", type=Path)
    sign_root.add_argument("--key", type=Path, action="append", required=True)
    sign_root.add_argument("--passphrase-env", metavar="VAR")
    sign_root.set_defaults(func=cmd_root_sign)

    check = root_commands.add_parser("verify", help="check a root (and its rotation)")
    check.add_argument("root", type=Path)
    check.add_argument("--previous", type=Path, help="the root it replaces")
    check.set_defaults(func=cmd_root_verify)


def cmd_generate(args: argparse.Namespace) -> int:
    passphrase = _passphrase(args.passphrase_env)
    private, public = generate(args.path.parent, args.path.name, passphrase)
    print(f"wrote {private} (private, mode 0600; keep it offline) and {public}")
    print(f"keyid {key_id(load_public_key(public))}")
    return OK


def cmd_root_init(args: argparse.Namespace) -> int:
    keys = [load_public_key(path) for path in args.key]
    unique = {key_id(k) for k in keys}
    if not 1 <= args.threshold <= len(unique):
        print(f"opsctl: --threshold must be 1 to {len(unique)} (distinct keys)", file=sys.stderr)
        return FAILED
    envelope = Envelope(ROOT_PAYLOAD_TYPE, root_payload(keys, args.threshold, args.version))
    write_atomic(args.out, envelope.to_json())
    print(
        f"wrote {args.out}: root v{args.version}, {len(unique)} keys, threshold "
        f"{args.threshold}; unsigned: sign with the old root's keys and its own"
    )
    return OK


def cmd_root_sign(args: argparse.Namespace) -> int:
    passphrase = _passphrase(args.passphrase_env)
    envelope = read_envelope(args.root)
    if envelope.payload_type != ROOT_PAYLOAD_TYPE:
        print(f"opsctl: {args.root}: not a trust root", file=sys.stderr)
        return FAILED
    for path in args.key:
        envelope = sign(envelope, load_private_key(path, passphrase))
    write_atomic(args.root, envelope.to_json())
    ids = ", ".join(short_id(s.keyid) for s in envelope.signatures)
    print(f"signed {args.root}; signatures: {ids}")
    return OK


def cmd_root_verify(args: argparse.Namespace) -> int:
    try:
        envelope = read_envelope(args.root)
        if args.previous is not None:
            old = verify_root(read_envelope(args.previous), str(args.previous))
            new = old.rotate(envelope, str(args.root))
        else:
            new = verify_root(envelope, str(args.root))
    except TrustError as exc:
        print(f"opsctl: rejected: {exc}", file=sys.stderr)
        return REFUSED
    print(f"{args.root}: OK root v{new.version}, {len(new.keys)} keys, threshold {new.threshold}")
    return OK


def _passphrase(variable: str | None) -> bytes | None:
    if not variable:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise SystemExit(f"opsctl: --passphrase-env: ${variable} is not set")
    return value.encode()
