"""``opsctl reports pareto``: which policies (and host/policy pairs) fire most. Pure.

The few at the top are the problems to extinguish forever rather than remediate forever. For each
it gives the count of remediations, the share that verified as fixed, the mean time to repair
(detection to verified fix) and the toil saved: count x the policy's ``manual_minutes`` (what a
human would have spent each time), from the newest published bundle that defines the policy.

Inputs are execution reports as the agent sends them: ``outcome`` is the execution status
(``fixed``, ``not_fixed``, ``failed``, ``interrupted``) and ``body_json`` carries
``detected_at`` (when the rule started firing; falls back to ``started_at``) and ``finished_at``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class ParetoRow:
    policy: str
    host: str = ""
    count: int = 0
    fixed: int = 0
    repair_seconds: list[float] = field(default_factory=list)
    manual_minutes: float = 0.0

    @property
    def fixed_rate(self) -> float:
        return self.fixed / self.count if self.count else 0.0

    @property
    def mttr_seconds(self) -> float:
        times = self.repair_seconds
        return sum(times) / len(times) if times else 0.0

    @property
    def toil_saved_minutes(self) -> float:
        return self.count * self.manual_minutes


@dataclass(frozen=True)
class Execution:
    host_id: str
    policy: str
    outcome: str
    at: float
    body_json: str


def repair_seconds(execution: Execution) -> float | None:
    """Detection to verified fix, or None when the report does not say."""
    try:
        body = json.loads(execution.body_json or "{}")
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    start = body.get("detected_at", body.get("started_at"))
    end = body.get("finished_at", execution.at)
    if not isinstance(start, int | float) or not isinstance(end, int | float) or end < start:
        return None
    return float(end - start)


def pareto(
    executions: Iterable[Execution], minutes: Mapping[str, float], limit: int = 20
) -> tuple[list[ParetoRow], list[ParetoRow]]:
    """(per-policy rows, per host/policy rows), each most frequent first."""
    by_policy: dict[str, ParetoRow] = {}
    by_host: dict[tuple[str, str], ParetoRow] = {}
    for ex in executions:
        manual = float(minutes.get(ex.policy, 0.0))
        rows = (
            by_policy.setdefault(ex.policy, ParetoRow(ex.policy, manual_minutes=manual)),
            by_host.setdefault(
                (ex.host_id, ex.policy), ParetoRow(ex.policy, ex.host_id, manual_minutes=manual)
            ),
        )
        took = repair_seconds(ex) if ex.outcome == "fixed" else None
        for row in rows:
            row.count += 1
            if ex.outcome == "fixed":
                row.fixed += 1
                if took is not None:
                    row.repair_seconds.append(took)

    def ranked(rows: Iterable[ParetoRow]) -> list[ParetoRow]:
        order = sorted(rows, key=lambda r: (-r.count, -r.toil_saved_minutes, r.policy, r.host))
        return order[:limit]

    return ranked(by_policy.values()), ranked(by_host.values())
