"""Health gates: defaults, absolute and relative thresholds, rates, observe mode."""

from __future__ import annotations

import pytest

from controlplane.errors import InvalidRequest
from controlplane.gates import GATES, GateMode, Observations, evaluate, parse_gates


def results(obs: Observations, **thresholds: str) -> dict[str, tuple[float, float, bool]]:
    settings = parse_gates(thresholds, {})
    return {r.name: (r.value, r.limit, r.passed) for r in evaluate(settings, obs)}


def test_every_gate_has_a_default_and_a_healthy_wave_passes() -> None:
    settings = parse_gates({}, {})
    assert set(settings) == set(GATES)
    assert all(s.mode == GateMode.ENFORCE for s in settings.values())
    assert all(passed for _, _, passed in results(Observations(updated=10)).values())


def test_any_failed_apply_fails_by_default() -> None:
    r = results(Observations(updated=1, failed_applies=1))
    assert r["failed_applies"] == (1.0, 0.0, False)
    assert results(Observations(updated=1, failed_applies=1), failed_applies="1")["failed_applies"][
        2
    ]


def test_percent_counts_scale_with_the_updated_hosts() -> None:
    canary = results(Observations(updated=1, lost=1))["agents_lost"]  # 1% of 1 host
    assert canary == (1.0, 0.01, False)
    wave = results(Observations(updated=500, lost=4))["agents_lost"]  # 1% of 500 = 5
    assert wave == (4.0, 5.0, True)


def test_the_failure_rate_gate() -> None:
    r = results(Observations(updated=4, executions=10, bad_executions=3), failure_rate="0.25")
    assert r["failure_rate"] == (0.3, 0.25, False)
    r = results(Observations(updated=4, executions=10, bad_executions=2))  # default 20%
    assert r["failure_rate"] == (0.2, 0.2, True)
    assert results(Observations(updated=4))["failure_rate"] == (0.0, 0.2, True)


def test_an_observed_gate_fails_without_halting() -> None:
    settings = parse_gates({}, {"escalations": "observe"})
    (gate,) = [
        r
        for r in evaluate(settings, Observations(updated=2, escalations=3))
        if r.name == "escalations"
    ]
    assert not gate.passed and not gate.halts and gate.mode == "observe"
    assert "gate escalations: 3 > 0.02" in gate.describe()


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_gates(
            {"bogus": "1", "failure_rate": "3", "agents_lost": "x"}, {"escalations": "warn"}
        )
    text = str(info.value)
    for fragment in ("unknown gate 'bogus'", "failure_rate=3", "agents_lost=x", "warn"):
        assert fragment in text
