"""The escalation payload every sink receives: what happened, where, what was tried, the runbook.

``build_payload`` makes a trigger (automation gave up: breaker open, not fixed, context, approval
needed, storm, interrupted); ``resolve_payload`` says an escalated problem is fixed. Both are plain
JSON, schema ``stanch.escalation/v1``, queued in the journal as they are and handed to each sink,
which may reshape them (PagerDuty events, Slack blocks). Bounded in size so a chatty command can
never make a page the receiver rejects.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from agent.sinks.base import RESOLVE

FIELD_LIMIT = 4096
"""Bytes kept of each step output (and of message, runbook and observed strings) in a payload."""
MAX_STEPS = 20


def build_payload(
    policy: str,
    host: str,
    severity: str,
    reason: str,
    message: str,
    runbook: str,
    tried: Sequence[Mapping[str, Any]],
    observed: Mapping[str, Any],
    correlation_id: str,
    at: float,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """The JSON every sink receives. Bounded in size (step output, message, runbook and observed
    strings are cut to 4 KiB, at most 20 steps) so a chatty command cannot make a page that the
    receiver rejects. ``text`` repeats the summary for Slack- and Mattermost-style webhooks."""
    summary = " ".join(f"[stanch] {host}: {policy} — {reason}: {message}".split())[:300]
    steps = [clip_tree(dict(step)) for step in list(tried)[:MAX_STEPS]]
    payload: dict[str, Any] = {
        "schema": "stanch.escalation/v1",
        "event": "trigger",
        "summary": summary,
        "text": f"{summary}\nRunbook: {runbook}" if runbook else summary,
        "policy": policy,
        "host": host,
        "severity": severity,
        "reason": reason,
        "message": clip(message),
        "runbook": clip(runbook),
        "tried": steps,
        "observed": clip_tree(dict(observed)),
        "correlation_id": correlation_id,
        "at": at,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
        "labels": dict(labels),
    }
    if len(tried) > MAX_STEPS:
        payload["tried_omitted"] = len(tried) - MAX_STEPS
    return payload


def resolve_payload(
    policy: str,
    host: str,
    message: str,
    runbook: str,
    correlation_id: str,
    at: float,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """The payload that says an escalated problem is fixed. Same schema as ``build_payload``
    with ``event: resolve`` and ``reason: resolved``; PagerDuty closes the incident with the
    matching ``dedup_key`` (host and policy), Slack posts a follow-up."""
    summary = " ".join(f"[stanch] {host}: {policy} — resolved: {message}".split())[:300]
    return {
        "schema": "stanch.escalation/v1",
        "event": RESOLVE,
        "summary": summary,
        "text": summary,
        "policy": policy,
        "host": host,
        "severity": "info",
        "reason": "resolved",
        "message": clip(message),
        "runbook": clip(runbook),
        "tried": [],
        "observed": {},
        "correlation_id": correlation_id,
        "at": at,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
        "labels": dict(labels),
    }


def clip(text: str, limit: int = FIELD_LIMIT) -> str:
    """At most ``limit`` UTF-8 bytes: a quarter from the head, the rest from the tail (where the
    error usually is), with a marker saying how much was dropped."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    head = data[: limit // 4]
    marker = f"\n[... {len(data) - limit} bytes truncated ...]\n".encode()
    tail = data[len(data) - (limit - len(head) - len(marker)) :]
    return (head + marker + tail).decode("utf-8", "ignore")


def clip_tree(value: Any, depth: int = 0) -> Any:
    """``clip`` every string inside nested dicts and lists."""
    if isinstance(value, str):
        return clip(value)
    if depth > 8:
        return clip(str(value))
    if isinstance(value, Mapping):
        return {str(k): clip_tree(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clip_tree(v, depth + 1) for v in value]
    return value
