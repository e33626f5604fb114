"""``opsctl agents list``, ``reports list|pareto``, ``explain HOST POLICY``, ``escalations list``.

What the fleet is and what it did, from the control plane's store: who is connected and on which
bundle, every report the agents sent, "why did (or didn't) this host act?", and the pareto of
what fires most, the problems worth fixing for good.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from agent.bundle.manifest import ManifestError, parse_time
from agent.duration import format_duration, parse_duration
from controlplane import pki_cli
from controlplane.admin_client import AdminClient, add_connection_args
from controlplane.errors import InvalidRequest
from controlplane.output import add_output_arg, ago, emit, labels_text, message_dict, stamp, table
from controlplane.selectors import parse_selector

OK = 0


def register(subparsers: Any) -> None:
    agents = subparsers.add_parser("agents", help="the fleet as the control plane sees it")
    agent_cmds = agents.add_subparsers(dest="agents_command", required=True, metavar="COMMAND")
    listing = agent_cmds.add_parser("list", help="agents, their bundle and health")
    listing.add_argument("-l", "--selector", action="append", help="e.g. env=prod,role=web")
    _common(listing)
    listing.set_defaults(func=cmd_agents)
    pki_cli.add_revoke(agent_cmds)
    pki_cli.add_unrevoke(agent_cmds)

    reports = subparsers.add_parser("reports", help="what the agents did")
    report_cmds = reports.add_subparsers(dest="reports_command", required=True, metavar="COMMAND")
    rlist = report_cmds.add_parser("list", help="reports, newest first")
    rlist.add_argument("--policy", default="")
    rlist.add_argument("--host", default="")
    rlist.add_argument("--kind", default="", help="decision | execution | rejection | escalation")
    rlist.add_argument("--since", default="", help="a duration (1h, 7d) or an RFC 3339 time")
    rlist.add_argument("--limit", type=int, default=100)
    _common(rlist)
    rlist.set_defaults(func=cmd_reports)
    pareto = report_cmds.add_parser("pareto", help="what fires most: fix those for good")
    pareto.add_argument("--since", default="7d")
    pareto.add_argument("--limit", type=int, default=20)
    _common(pareto)
    pareto.set_defaults(func=cmd_pareto)

    explain = subparsers.add_parser("explain", help="why a host did (or didn't) act on a policy")
    explain.add_argument("host")
    explain.add_argument("policy")
    explain.add_argument("--limit", type=int, default=20)
    _common(explain)
    explain.set_defaults(func=cmd_explain)

    escalations = subparsers.add_parser("escalations", help="what the control plane escalated")
    esc_cmds = escalations.add_subparsers(dest="esc_command", required=True, metavar="COMMAND")
    elist = esc_cmds.add_parser("list", help="storm-breaker trips, rollbacks")
    elist.add_argument("--since", default="7d")
    _common(elist)
    elist.set_defaults(func=cmd_escalations)


def _common(parser: argparse.ArgumentParser) -> None:
    add_connection_args(parser)
    add_output_arg(parser)


def since(text: str, now: float | None = None) -> float:
    """``7d`` -> seven days ago; an RFC 3339 time as is; empty -> the beginning."""
    if not text:
        return 0.0
    now = time.time() if now is None else now
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_time(text, "--since")
    except ManifestError:
        raise InvalidRequest(
            f"--since {text!r}: use a duration (1h, 7d) or an RFC 3339 time"
        ) from None


def cmd_agents(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    client = AdminClient.from_args(args)
    request = admin_pb2.ListAgentsRequest(selector=parse_selector(args.selector))
    found = client.call("ListAgents", request)
    now = time.time()

    def render() -> str:
        rows = [
            [
                a.host_id,
                "yes" if a.connected else "no",
                ago(a.last_seen, now),
                f"v{a.bundle_version} {a.bundle_digest[:12]}" if a.bundle_digest else "-",
                a.assigned_seq or "-",
                f"{a.health.firing}/{a.health.policies}",
                a.health.outbox_depth,
                a.agent_version,
                labels_text(a.labels),
            ]
            for a in found.agents
        ]
        headers = ["host", "connected", "seen", "bundle", "seq", "firing", "outbox"]
        return table([*headers, "version", "labels"], rows)

    emit([message_dict(a) for a in found.agents], args.output, render)
    return OK


def cmd_reports(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    client = AdminClient.from_args(args)
    request = admin_pb2.ListReportsRequest(
        policy=args.policy,
        host=args.host,
        kind=args.kind,
        since=since(args.since),
        limit=args.limit,
    )
    found = client.call("ListReports", request)
    rows = [[stamp(r.at), r.host_id, r.kind, r.policy, r.outcome, r.reason] for r in found.reports]
    docs = [message_dict(r) for r in found.reports]
    emit(
        docs,
        args.output,
        lambda: table(["at", "host", "kind", "policy", "outcome", "reason"], rows),
    )
    return OK


def cmd_pareto(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    client = AdminClient.from_args(args)
    found = client.call(
        "Pareto", admin_pb2.ParetoRequest(since=since(args.since), limit=args.limit)
    )

    def rows(items: Any, host: bool) -> list[list[Any]]:
        total = sum(r.count for r in items) or 1
        out, running = [], 0
        for r in items:
            running += r.count
            mttr = format_duration(r.mttr_seconds) if r.mttr_seconds else "-"
            row = [r.policy, r.count, f"{running / total:.0%}", f"{r.fixed_rate:.0%}", mttr]
            row.append(f"{r.toil_saved_minutes:g}m")
            out.append([r.host, *row] if host else row)
        return out

    headers = ["policy", "count", "cumulative", "fixed", "mttr", "toil saved"]

    def render() -> str:
        return (
            f"Policies that fired most since {stamp(since(args.since))}:\n"
            + table(headers, rows(found.policies, False))
            + "\n\nHost and policy pairs:\n"
            + table(["host", *headers], rows(found.hosts, True))
        )

    emit(message_dict(found), args.output, render)
    return OK


def cmd_explain(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    client = AdminClient.from_args(args)
    request = admin_pb2.ExplainRequest(host=args.host, policy=args.policy, limit=args.limit)
    found = client.call("Explain", request)
    emit(message_dict(found), args.output, lambda: explain_text(found, args.host, args.policy))
    return OK


def explain_text(found: Any, host: str, policy: str) -> str:
    now = time.time()
    a = found.agent
    lines = [f"Host {host}, policy {policy}"]
    if a.host_id:
        state = (
            "connected" if a.connected else f"disconnected, last seen {ago(a.last_seen, now)} ago"
        )
        lines.append(
            f"  agent {a.agent_version or '?'}: {state}; bundle v{a.bundle_version} "
            f"{a.bundle_digest[:12] or '-'}; firing now: "
            f"{', '.join(a.health.firing_policies) or 'nothing'}"
        )
    for p in found.pauses:
        until = "until resumed" if not p.until else f"until {stamp(p.until)}"
        lines.append(f"  PAUSED centrally ({p.scope}) {until} by {p.by}: {p.reason}")
    if not found.reports:
        lines.append("  no reports for this policy from this host")
    else:
        lines.append(f"  last {len(found.reports)} reports, newest first (UTC):")
    for r in found.reports:
        lines.append(f"  {stamp(r.at)}  {r.kind:<10} {r.outcome:<18} {r.reason}{_detail(r)}")
    return "\n".join(lines)


def _detail(r: Any) -> str:
    try:
        body = json.loads(r.body_json or "{}")
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    message = body.get("message") or body.get("verification") or body.get("error") or ""
    observed = body.get("observed") or {}
    values = ", ".join(f"{k}={v}" for k, v in sorted(observed.items())) if observed else ""
    parts = [str(x) for x in (message, values) if x]
    return ("  (" + "; ".join(parts) + ")") if parts else ""


def cmd_escalations(args: argparse.Namespace) -> int:
    from stanch.v1 import admin_pb2

    client = AdminClient.from_args(args)
    found = client.call(
        "ListEscalations", admin_pb2.ListEscalationsRequest(since=since(args.since))
    )
    rows = [[stamp(e.at), e.source, e.policy, e.message] for e in found.escalations]
    docs = [message_dict(e) for e in found.escalations]
    emit(docs, args.output, lambda: table(["at", "source", "policy", "message"], rows))
    return OK
