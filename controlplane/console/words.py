"""Reports in plain words for the Host page: what the agent decided and why, what it ran.

The agent reports every decision (including the ones not to act, with the guardrail that held it
back and until when) and every execution (each step's command and output). This module turns
one stored report into a :class:`Line` a person reads at 3 AM. Step output is bounded and passed
through :func:`redact` first: command output can hold secrets, and a browser tab is a wider
audience than the host's journal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from agent.explain import HEADLINES
from agent.redact import Redactor
from controlplane.storage.base import Report

MAX_OUTPUT = 2000
"""Characters of each step's stdout/stderr shown (the tail: errors come last)."""
MAX_VALUE = 200
GUARDRAILS = {
    "in_progress": "a remediation already running",
    "paused": "kill switch",
    "maintenance": "maintenance window",
    "cooldown": "cooldown",
    "budget": "run budget",
    "approval_rejected": "approval rejected",
    "breaker_open": "circuit breaker",
    "storm": "storm guard",
    "context": "context rule",
    "host_concurrency": "host concurrency limit",
    "host_rate": "host run budget",
}
_REDACTOR = Redactor.build(extra=[r"(?i)\b(?:bearer|basic)\s+(?P<secret>[A-Za-z0-9._~+/=-]+)"])


def redact(text: str) -> str:
    """The agent's built-in redaction again (``agent.redact``): the agent already redacted its
    output with its own config, and a page is a wider audience, so a second pass costs little."""
    return _REDACTOR.redact(text)


def clip(text: str, limit: int = MAX_OUTPUT) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} characters cut]\n" + text[-limit:]


@dataclass(frozen=True)
class Step:
    name: str
    command: str
    ok: bool
    result: str
    duration_ms: float
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Line:
    at: float
    kind: str
    policy: str
    outcome: str
    headline: str
    message: str
    why: list[str] = field(default_factory=list)
    observed: list[tuple[str, str]] = field(default_factory=list)
    guardrail: str = ""
    """For a suppressed decision: the guardrail that held the action back."""
    until: float = 0.0
    """...and until when (0: not known, or until someone lifts it)."""
    steps: list[Step] = field(default_factory=list)
    tone: str = "info"
    """ok | warn | bad | info: the colour of the row."""


def _body(report: Report) -> dict[str, Any]:
    try:
        body = json.loads(report.body_json or "{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return redact(text)[:MAX_VALUE]


def _tone(outcome: str) -> str:
    if outcome in ("fixed", "cleared"):
        return "ok"
    if outcome in ("failed", "not_fixed", "interrupted", "rejected", "escalated"):
        return "bad"
    if outcome in ("suppressed", "awaiting_approval", "observe"):
        return "warn"
    return "info"


def line(report: Report) -> Line:
    body = _body(report)
    observed = body.get("observed") if isinstance(body.get("observed"), dict) else {}
    headline = HEADLINES.get(report.outcome, report.outcome) or report.outcome
    why = [redact(str(w)) for w in body.get("why") or [] if w] if report.kind == "decision" else []
    message = str(body.get("message") or body.get("verification") or body.get("error") or "")
    if report.kind == "execution":
        message = str(body.get("verification") or body.get("error") or report.reason)
    elif report.kind == "rejection":
        headline = "bundle refused"
        message = message or report.reason
    elif report.kind == "escalation":
        headline = "escalated to a human"
    until = body.get("until")
    return Line(
        at=report.at,
        kind=report.kind,
        policy=report.policy,
        outcome=report.outcome,
        headline=headline,
        message=redact(message)[:1000],
        why=why,
        observed=[(str(k), _value(v)) for k, v in sorted((observed or {}).items())],
        guardrail=GUARDRAILS.get(report.reason, report.reason)
        if report.outcome == "suppressed"
        else "",
        until=float(until) if isinstance(until, int | float) else 0.0,
        steps=_steps(body) if report.kind == "execution" else [],
        tone=_tone(report.outcome),
    )


def _steps(body: dict[str, Any]) -> list[Step]:
    steps = []
    for raw in body.get("steps") or []:
        if not isinstance(raw, dict):
            continue
        argv = raw.get("argv") or []
        command = " ".join(str(a) for a in argv) if isinstance(argv, list) else str(argv)
        ok = bool(raw.get("ok"))
        steps.append(
            Step(
                name=str(raw.get("name", "")),
                command=redact(command)[:1000],
                ok=ok,
                result="ok" if ok else redact(str(raw.get("error") or "failed"))[:500],
                duration_ms=float(raw.get("duration_ms") or 0.0),
                stdout=clip(redact(str(raw.get("stdout") or ""))),
                stderr=clip(redact(str(raw.get("stderr") or ""))),
            )
        )
    return steps


def safe_link(url: str) -> str:
    """Only http(s) links reach an ``href``: a policy file must not inject ``javascript:``."""
    return url if re.match(r"(?i)^https?://[^\s\"'<>]+$", url or "") else ""
