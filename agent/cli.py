"""``stanch-agent``: run the agent, validate policies, and ask it why it did (not) act.

Read-only commands (status, history, explain, approvals) open the state file directly; they work
whether the agent runs or not. Pause, approve and reset write to the same state, which the running
agent reads on its next decision.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.cli_bundle import register as register_bundle
from agent.config import AgentConfig, load_config, parse_config
from agent.duration import format_duration, parse_duration
from agent.errors import ConfigError
from agent.explain import explain_policy, print_history, print_status
from agent.journal import Journal
from agent.pauses import GLOBAL, PauseFile
from agent.policy.loader import load_dir, load_file
from agent.sqlite_db import DatabaseFileError

DEFAULT_CONFIG = "/etc/stanch/agent.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"stanch-agent: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except DatabaseFileError as exc:
        # Exit at once with the file and the remedy: no retry loop here that would hide it.
        print(f"stanch-agent: state file unusable: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stanch-agent", description=__doc__)
    p.add_argument("--version", action="version", version=f"stanch-agent {__version__}")
    p.add_argument("--config", help=f"agent config file (default {DEFAULT_CONFIG} if present)")
    p.add_argument("--state-dir", help="state directory (overrides the config)")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument("--policies", help="policy directory (overrides the config)")
    run.add_argument("--root", help="host root prefix for paths, e.g. /host in a DaemonSet")
    run.add_argument("--host-id", help="host identity (default: the hostname)")
    run.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--log-level", default="info")
    run.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        default="auto",
        help="auto (default): text on a terminal, JSON lines otherwise",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate policy files; exit 1 on any error")
    check.add_argument("paths", nargs="+", help="policy directories or files")
    check.set_defaults(func=cmd_check)

    status = sub.add_parser("status", help="policies, check states, breakers, pauses")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    hist = sub.add_parser("history", help="recent remediations")
    hist.add_argument("--policy")
    hist.add_argument("--limit", type=int, default=20)
    hist.add_argument("--json", action="store_true")
    hist.set_defaults(func=cmd_history)

    exp = sub.add_parser("explain", help="why a policy did (not) act, in plain words")
    exp.add_argument("policy")
    exp.add_argument("--limit", type=int, default=10)
    exp.set_defaults(func=cmd_explain)

    pause = sub.add_parser("pause", help="kill switch: stop acting (all, or one policy)")
    pause.add_argument("--policy", help="pause only this policy")
    pause.add_argument("--for", dest="duration", help="e.g. 30m, 2h (default: until resumed)")
    pause.add_argument("--reason", default="")
    pause.set_defaults(func=cmd_pause)

    resume = sub.add_parser("resume", help="lift a pause")
    resume.add_argument("--policy")
    resume.set_defaults(func=cmd_resume)

    for name, verb in (("approve", "approve"), ("reject", "reject")):
        ap = sub.add_parser(name, help=f"{verb} a pending remediation (approve mode)")
        ap.add_argument("id")
        ap.add_argument("--by", default=_whoami())
        ap.set_defaults(func=cmd_approve, approve=name == "approve")

    apl = sub.add_parser("approvals", help="list remediations waiting for approval")
    apl.add_argument("--all", action="store_true", help="include decided and expired ones")
    apl.set_defaults(func=cmd_approvals)

    reset = sub.add_parser("reset", help="close a policy's circuit breaker")
    reset.add_argument("policy")
    reset.set_defaults(func=cmd_reset)

    register_bundle(sub)
    return p


# ---- helpers -----------------------------------------------------------------------------------


def _whoami() -> str:
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _config(args: argparse.Namespace, **overrides: Any) -> AgentConfig:
    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    overrides["state_dir"] = (
        args.state_dir
        or os.environ.get("STANCH_STATE_DIR")
        or (None if path else "/var/lib/stanch")
    )
    if path:
        return load_config(path, **overrides)
    return parse_config({}, "<defaults>", **overrides)


def _journal(args: argparse.Namespace) -> Journal:
    config = _config(args)
    if not config.journal_path.exists():
        raise SystemExit(
            f"stanch-agent: no state at {config.journal_path}; is the agent "
            "running with this --state-dir?"
        )
    return Journal(config.journal_path)


# ---- commands ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from agent.logs import setup_logging
    from agent.runner import Agent

    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"stanch-agent: --label {item!r}: expected KEY=VALUE")
        labels[key] = value
    config = _config(
        args,
        policies_dir=args.policies,
        root=args.root,
        host_id=args.host_id,
        labels={**labels} or None,
    )
    setup_logging(config.host_id, args.log_level, args.log_format)
    agent = Agent(config)
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: agent.request_reload())
    agent.run()
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    errors: list[str] = []
    count = 0
    for raw in args.paths:
        path = Path(raw)
        if path.is_dir():
            result = load_dir(path)
            count += len(result.policies)
            errors.extend(str(e) for e in result.errors)
        else:
            policies, errs = load_file(path)
            count += len(policies)
            errors.extend(str(e) for e in errs)
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        print(
            f"{len(errors)} error(s); {count} valid polic{'y' if count == 1 else 'ies'}",
            file=sys.stderr,
        )
        return 1
    print(f"ok: {count} polic{'y' if count == 1 else 'ies'} valid")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    journal = _journal(args)
    pauses = PauseFile(_config(args).pause_path).load()
    if args.json:
        print(
            json.dumps(
                {
                    "agent": journal.agent_state(),
                    "policies": journal.policy_states(),
                    "pauses": {k: vars(v) for k, v in pauses.items()},
                },
                indent=2,
                default=str,
            )
        )
        return 0
    print_status(journal, pauses, time.time())
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    journal = _journal(args)
    rows = journal.executions(args.policy, args.limit)
    if args.json:
        print(json.dumps([vars(r) for r in rows], indent=2, default=str))
        return 0
    print_history(rows)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    journal = _journal(args)
    text = explain_policy(journal, args.policy, args.limit)
    print(text)
    return 0 if text else 1


def cmd_pause(args: argparse.Namespace) -> int:
    config = _config(args)
    now = time.time()
    until = now + parse_duration(args.duration) if args.duration else None
    scope = args.policy or GLOBAL
    PauseFile(config.pause_path).set(scope, until, args.reason, _whoami(), now)
    what = f"policy {args.policy}" if args.policy else "all policies"
    when = f"for {format_duration(until - now)}" if until else "until `stanch-agent resume`"
    print(f"paused {what} {when}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    config = _config(args)
    found = PauseFile(config.pause_path).clear(args.policy or GLOBAL)
    what = f"policy {args.policy}" if args.policy else "all policies"
    print(f"resumed {what}" if found else f"{what} was not paused")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    journal = _journal(args)
    try:
        policy = journal.decide_approval(args.id, args.approve, args.by, time.time())
    except LookupError as exc:
        print(f"stanch-agent: {exc}", file=sys.stderr)
        return 1
    verb = "approved" if args.approve else "rejected"
    print(
        f"{verb} {args.id} for policy {policy}; the agent acts on its next evaluation"
        if args.approve
        else f"{verb} {args.id} for policy {policy}"
    )
    return 0


def cmd_approvals(args: argparse.Namespace) -> int:
    journal = _journal(args)
    rows = journal.approvals(None if args.all else "pending")
    if not rows:
        print("no pending approvals")
        return 0
    now = time.time()
    for r in rows:
        left = r["expires_at"] - now
        expiry = f"expires in {format_duration(left)}" if left > 0 else "expired"
        print(f"{r['id']}  {r['policy']:<28} {r['status']:<9} {expiry:<20} {r['message']}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    journal = _journal(args)
    if journal.reset_breaker(args.policy):
        print(f"breaker for {args.policy} closed; automation resumes on its next evaluation")
    else:
        print(f"{args.policy} had no breaker state")
    return 0


if __name__ == "__main__":
    sys.exit(main())
