"""The commands behind ``stanch-agent bundle ...`` (see ``agent.cli_bundle``).

Imported only when a bundle command runs: verification needs ``cryptography``, which the agent's
own start-up path never loads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
