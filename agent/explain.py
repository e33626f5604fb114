"""Plain-words answers to "why did (or didn't) the agent act?", read from the journal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agent.duration import format_duration
from agent.journal import DecisionRow, ExecutionRow, Journal
from agent.pauses import GLOBAL, Pause

HEADLINES = {
    "act": "acted",
    "observe": "observed (would act)",
    "suppressed": "",
    "awaiting_approval": "waiting for approval",
    "cleared": "problem cleared",
    "fixed": "fixed",
    "not_fixed": "NOT fixed",
    "failed": "remediation FAILED",
    "interrupted": "remediation interrupted",
}


def stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _values(observed: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(observed.items()))


def explain_policy(journal: Journal, policy: str, limit: int = 10) -> str:
    rows = journal.decisions(policy, limit)
    state = journal.policy_states().get(policy)
    if not rows and state is None:
        return ""
    lines = []
    if state:
        lines.append(
            f"Policy {policy} ({state.get('source', '?')}): mode {state.get('mode')}, "
            f"severity {state.get('severity')}, "
            f"{'FIRING' if state.get('firing') else 'not firing'} now"
        )
        if state.get("runbook"):
            lines.append(f"Runbook: {state['runbook']}")
        for name, check in state.get("checks", {}).items():
            detail = check.get("error") or check.get("summary") or ""
            lines.append(f"  check {name}: {check['status']}" + (f" ({detail})" if detail else ""))
    lines.append(f"Last {len(rows)} decisions, newest first (times UTC):")
    for row in rows:
        lines.extend(_decision_lines(journal, row))
    return "\n".join(lines)


def _decision_lines(journal: Journal, row: DecisionRow) -> list[str]:
    when = stamp(row.at)
    if row.repeat > 1:
        when += f" .. {stamp(row.last_at)[11:]} (x{row.repeat})"
    headline = HEADLINES.get(row.outcome, row.outcome)
    out = [f"- {when}  {headline + ': ' if headline else ''}{row.message}"]
    if row.why:
        out.append(f"    because: {'; '.join(row.why)}")
    if row.observed:
        out.append(f"    observed: {_values(row.observed)}")
    if row.execution_id and row.outcome in ("fixed", "not_fixed", "failed"):
        execution = journal.execution(row.execution_id)
        for step in execution.steps if execution else []:
            result = "ok" if step.get("ok") else (step.get("error") or "failed")
            out.append(
                f"    step {step['name']}: {' '.join(step['argv'])} -> {result} "
                f"({step.get('duration_ms', 0):.0f} ms)"
            )
            for stream in ("stdout", "stderr"):
                text = (step.get(stream) or "").strip()
                if text:
                    out.append(f"      {stream}: {_clip(text)}")
    return out


def _clip(text: str, width: int = 200) -> str:
    flat = " | ".join(text.splitlines())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def print_history(rows: Sequence[ExecutionRow]) -> None:
    if not rows:
        print("no remediations recorded")
        return
    print(f"{'started (UTC)':<20} {'policy':<28} {'status':<12} {'took':>7}  id / detail")
    for r in rows:
        took = format_duration(r.finished_at - r.started_at) if r.finished_at else "-"
        detail = r.error or r.verification
        print(
            f"{stamp(r.started_at):<20} {r.policy:<28} {r.status:<12} {took:>7}  {r.id}  "
            f"{_clip(detail, 80)}"
        )


def print_status(journal: Journal, pauses: Mapping[str, Pause], now: float) -> None:
    agent = journal.agent_state()
    beat = agent.get("heartbeat_at")
    alive = agent.get("stopped_at") is None and beat is not None and now - beat < 60
    print(
        f"agent: host {agent.get('host', '?')}, pid {agent.get('pid', '?')}, "
        f"{'running' if alive else 'NOT running'} (last heartbeat {stamp(beat)} UTC)"
    )
    if agent.get("storm"):
        print("STORM GUARD ACTIVE: automation stopped host-wide")
    for scope, pause in pauses.items():
        if pause.active(now):
            what = "all policies" if scope == GLOBAL else f"policy {scope}"
            until = f"until {stamp(pause.until)} UTC" if pause.until else "until resumed"
            print(f"PAUSED: {what} {until} {pause.reason}".rstrip())
    for error in agent.get("load_errors") or []:
        print(f"policy error: {error}")
    states = journal.policy_states()
    print(f"{'policy':<28} {'mode':<8} {'state':<10} {'breaker':<10} checks")
    for name, state in states.items():
        failures, opened = journal.breaker(name)
        breaker = "OPEN" if opened else (f"{failures} fail" if failures else "closed")
        firing = "running" if state.get("running") else ("FIRING" if state.get("firing") else "ok")
        checks = ", ".join(f"{c}={v['status']}" for c, v in state.get("checks", {}).items())
        print(f"{name:<28} {state.get('mode', ''):<8} {firing:<10} {breaker:<10} {checks}")
