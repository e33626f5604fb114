"""The signature-checking half of applying an assignment, run as a short-lived child process.

``python -m agent.fleet.verifier assignment --keys DIR --host H --last-seq N < envelope.json``
``python -m agent.fleet.verifier install FILE --digest D --trust DIR --state-dir DIR``

Each prints one JSON verdict on stdout and exits 0; any other exit is a crash of the verifier.

Why a child process: Ed25519 verification needs ``cryptography``, which maps ~6 MiB of Rust and
OpenSSL into whatever process imports it, for good. Assignments are rare (a rollout step, a
rollback), and a connected agent must stay small for months on every host of the fleet, so the
long-lived agent never imports it; the same rule the agent's own start-up path keeps for bundle
commands. A verdict costs one interpreter start (~0.2 s) per assignment.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

INSTALL_TRANSIENT = ("storage_error", "unreadable")
"""Store refusals that say nothing about the bundle: the same assignment may be retried."""


def verify(args: argparse.Namespace) -> dict[str, Any]:
    from agent.bundle.keys import KeyFileError, load_public_dir
    from agent.fleet.assignment import TRUST_ERROR, AssignmentRejected, verify_assignment

    data = sys.stdin.buffer.read()
    try:
        keys = load_public_dir(Path(args.keys))
        assignment = verify_assignment(data, keys, args.host, args.last_seq)
    except KeyFileError as exc:
        return {"ok": False, "reason": TRUST_ERROR, "message": f"assignment keys: {exc}"}
    except AssignmentRejected as exc:
        return {
            "ok": False,
            "reason": exc.reason,
            "message": exc.message,
            "seq": exc.seq,
            "digest": exc.digest,
        }
    return {"ok": True, "assignment": asdict(assignment)}


def install(args: argparse.Namespace) -> dict[str, Any]:
    """Install FILE if it is the bundle the assignment named (its SHA-256 is the digest); a
    server that serves other bytes under a digest is refused before anything is verified."""
    import hashlib

    from agent.bundle import BundleRejected, BundleStore, TrustError, TrustStore
    from agent.clock import SystemClock
    from agent.errors import StanchError

    try:
        actual = hashlib.sha256(Path(args.file).read_bytes()).hexdigest()
    except OSError as exc:
        return {"ok": False, "reason": "install_error", "message": str(exc), "transient": True}
    if actual != args.digest:
        message = f"the control plane served bytes that hash to {actual}, not {args.digest}"
        return {"ok": False, "reason": "digest_mismatch", "message": message, "transient": True}
    try:
        trust = TrustStore.load(args.trust, args.threshold)
    except TrustError as exc:
        return {"ok": False, "reason": "trust_error", "message": str(exc), "transient": True}
    try:
        done = BundleStore(args.state_dir).install(
            args.file, trust, SystemClock().now(), allow_rollback=True, allow_rename=True
        )
    except BundleRejected as exc:
        reason = str(exc.reason)
        transient = reason in INSTALL_TRANSIENT
        return {"ok": False, "reason": reason, "message": exc.message, "transient": transient}
    except StanchError as exc:
        return {"ok": False, "reason": "install_error", "message": str(exc), "transient": True}
    return {"ok": True, **asdict(done)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent.fleet.verifier")
    sub = parser.add_subparsers(required=True)
    a = sub.add_parser("assignment", help="verify a signed assignment read from stdin")
    a.add_argument("--keys", required=True)
    a.add_argument("--host", required=True)
    a.add_argument("--last-seq", type=int, required=True)
    a.set_defaults(func=verify)
    i = sub.add_parser("install", help="verify and activate a fetched bundle")
    i.add_argument("file")
    i.add_argument("--digest", required=True)
    i.add_argument("--trust", required=True)
    i.add_argument("--threshold", type=int)
    i.add_argument("--state-dir", required=True)
    i.set_defaults(func=install)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(json.dumps(args.func(args), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
