"""Pareto of what fires most: count, fixed rate, MTTR (detect -> verified), toil saved."""

from __future__ import annotations

import json

from controlplane.pareto import Execution, pareto, repair_seconds


def ex(host: str, policy: str, outcome: str, **body: float) -> Execution:
    return Execution(host, policy, outcome, body.get("finished_at", 100.0), json.dumps(body))


def test_ranks_policies_and_host_policy_pairs() -> None:
    executions = [
        ex("a", "disk", "fixed", detected_at=0, started_at=30, finished_at=60),
        ex("a", "disk", "fixed", started_at=10, finished_at=40),
        ex("b", "disk", "not_fixed", started_at=0, finished_at=50),
        ex("a", "nginx", "fixed", started_at=0, finished_at=5),
    ]
    policies, pairs = pareto(executions, {"disk": 15, "nginx": 5})
    disk = policies[0]
    assert (disk.policy, disk.count, disk.fixed) == ("disk", 3, 2)
    assert round(disk.fixed_rate, 3) == 0.667
    assert disk.mttr_seconds == 45.0  # (60 - 0) detected, (40 - 10) from start; mean
    assert disk.toil_saved_minutes == 45.0  # 3 x 15
    assert [(p.host, p.policy, p.count) for p in pairs] == [
        ("a", "disk", 2),
        ("b", "disk", 1),  # a tie on count goes to the one that saves more toil
        ("a", "nginx", 1),
    ]


def test_unknown_minutes_and_missing_times() -> None:
    (row,), _ = pareto([Execution("a", "p", "fixed", 10.0, "not json")], {})
    assert row.toil_saved_minutes == 0 and row.mttr_seconds == 0.0
    assert repair_seconds(Execution("a", "p", "fixed", 10.0, '{"started_at": 4}')) == 6.0
    assert repair_seconds(Execution("a", "p", "fixed", 10.0, '{"started_at": 40}')) is None
