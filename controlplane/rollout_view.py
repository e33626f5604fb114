"""Rendering a rollout for people: the status block, the list table, and watch lines.

Works on the ``RolloutStatus`` message (what ``-o json`` prints), so the table and the JSON can
never disagree about the facts.
"""

from __future__ import annotations

import time
from typing import Any

from agent.duration import format_duration
from controlplane.output import ago, labels_text, table

TERMINAL = {"completed": 0, "rolled_back": 1, "aborted": 1}
"""Rollout state -> ``rollout status --watch`` exit status (CI gates on it)."""


def summary(r: Any, now: float | None = None) -> str:
    """One line: what a CI log shows at each change."""
    now = time.time() if now is None else now
    total = len(r.waves)
    line = f"rollout {r.id}: {r.state}"
    if r.state in ("running", "paused") and total:
        wave = r.waves[r.wave]
        left = max(0.0, wave.bake_until - now)
        line += (
            f", wave {r.wave + 1}/{total} ({wave.spec}): {wave.applied}/{wave.assigned} applied"
            f", bake {format_duration(left)} left"
        )
    failing = [g for g in r.gates if not g.passed]
    if failing:
        line += "; failing: " + ", ".join(f"{g.name} ({g.mode})" for g in failing)
    if r.reason:
        line += f"; {r.reason}"
    return line


def status_block(r: Any, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [
        f"Rollout:   {r.id}",
        f"Bundle:    {r.bundle_name} v{r.bundle_version} ({r.bundle_digest[:12]})",
        f"Selector:  {labels_text(r.selector) if r.selector else '(all hosts)'}"
        f"   matching {r.matching}, updated {r.updated}, rolled back {r.rolled_back}",
        f"State:     {r.state}   started {ago(r.created_at, now)} ago by {r.by or '-'}",
    ]
    if r.reason:
        lines.append(f"Reason:    {r.reason}")
    lines.append("")
    rows = []
    for w in r.waves:
        bake = ""
        if w.state in ("baking", "paused"):
            bake = format_duration(max(0.0, w.bake_until - now)) + " left"
        rows.append([w.index + 1, w.spec, w.target, w.assigned, w.applied, w.failed, w.state, bake])
    lines.append(
        table(["wave", "spec", "target", "assigned", "applied", "failed", "state", "bake"], rows)
    )
    if r.gates:
        lines.append("")
        gate_rows = [
            [
                g.name,
                g.mode,
                _gate_value(g.name, g.value),
                _gate_value(g.name, g.limit),
                g.threshold,
                "ok" if g.passed else ("FAIL" if g.mode == "enforce" else "fail (observed)"),
                g.detail,
            ]
            for g in r.gates
        ]
        lines.append(
            table(["gate", "mode", "value", "limit", "threshold", "status", "detail"], gate_rows)
        )
    return "\n".join(lines)


def _gate_value(name: str, value: float) -> str:
    return f"{value:.0%}" if name == "failure_rate" else f"{value:g}"


def list_table(rollouts: Any, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [
        [
            r.id,
            f"{r.bundle_name} v{r.bundle_version}",
            labels_text(r.selector) if r.selector else "(all)",
            r.state,
            f"{r.wave + 1}/{len(r.waves)}",
            f"{r.updated}/{r.matching}",
            ago(r.created_at, now),
            r.reason,
        ]
        for r in rollouts
    ]
    return table(["id", "bundle", "selector", "state", "wave", "updated", "age", "reason"], rows)
