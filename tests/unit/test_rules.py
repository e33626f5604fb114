"""Rule evaluation: ``for`` holds, ``clear`` hysteresis, combinators, states, missing data."""

from __future__ import annotations

import math
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.checks.base import CheckResult, MetricValue, Status, Threshold
from agent.engine.rules import (
    RuleMemory,
    compare,
    describe,
    evaluate,
    problem_cleared,
    threshold_status,
)
from agent.policy.model import AllOf, AnyOf, Compare, Not, Rule, StateIs

DISK_HIGH = Compare("when", "disk", "used_percent", ">", 90.0, clear=80.0)


def res(
    check: str = "disk",
    status: Status = Status.OK,
    error: str | None = None,
    **metrics: MetricValue,
) -> dict[str, CheckResult]:
    return {check: CheckResult(check, status, metrics, error=error)}


def disk(value: float) -> dict[str, CheckResult]:
    return res(used_percent=value)


# ---- single comparisons and `for` ----------------------------------------------------------


def test_plain_compare_fires_and_reports_why_and_observed() -> None:
    rule = Rule(Compare("when", "disk", "used_percent", ">", 90.0))
    ev = evaluate(rule, disk(93.5), {}, now=0.0)
    assert ev.firing
    assert ev.why == ("disk.used_percent = 93.5 > 90",)
    assert ev.observed == {"disk.used_percent": 93.5}
    assert ev.context == ()
    ev = evaluate(rule, disk(90.0), {}, now=1.0)
    assert not ev.firing
    assert ev.why == ()
    assert ev.observed == {"disk.used_percent": 90.0}


def test_for_must_hold_continuously_then_fires() -> None:
    rule = Rule(Compare("when", "disk", "used_percent", ">", 90.0, for_=60.0))
    memory: RuleMemory = {}
    assert not evaluate(rule, disk(95), memory, now=100.0).firing
    assert not evaluate(rule, disk(95), memory, now=130.0).firing
    assert not evaluate(rule, disk(95), memory, now=159.9).firing
    ev = evaluate(rule, disk(95), memory, now=160.0)
    assert ev.firing
    assert ev.why == ("disk.used_percent = 95 > 90 for 60s",)
    assert evaluate(rule, disk(96), memory, now=400.0).why == (
        "disk.used_percent = 96 > 90 for 300s",
    )


def test_for_resets_when_the_condition_breaks() -> None:
    rule = Rule(Compare("when", "disk", "used_percent", ">", 90.0, for_=60.0))
    memory: RuleMemory = {}
    assert not evaluate(rule, disk(95), memory, now=0.0).firing
    assert not evaluate(rule, disk(95), memory, now=50.0).firing
    assert not evaluate(rule, disk(89), memory, now=55.0).firing  # breaks: the clock restarts
    assert not evaluate(rule, disk(95), memory, now=60.0).firing
    assert not evaluate(rule, disk(95), memory, now=119.0).firing
    assert evaluate(rule, disk(95), memory, now=120.0).firing
    assert not evaluate(rule, disk(10), memory, now=121.0).firing
    assert not evaluate(rule, disk(95), memory, now=122.0).firing


def test_for_applies_to_state_conditions() -> None:
    rule = Rule(StateIs("when", "web", frozenset({Status.CRITICAL}), for_=30.0))
    memory: RuleMemory = {}
    crit = res("web", Status.CRITICAL)
    assert not evaluate(rule, crit, memory, now=0.0).firing
    assert not evaluate(rule, res("web", Status.WARNING), memory, now=20.0).firing
    assert not evaluate(rule, crit, memory, now=25.0).firing
    ev = evaluate(rule, crit, memory, now=55.0)
    assert ev.firing
    assert ev.why == ("web is critical for 30s",)
    assert ev.observed == {"web.status": "critical"}


# ---- hysteresis ----------------------------------------------------------------------------


def test_hysteresis_fires_above_value_and_clears_only_below_clear() -> None:
    rule = Rule(DISK_HIGH)
    memory: RuleMemory = {}
    assert not evaluate(rule, disk(85), memory, now=0.0).firing  # never fired: 85 is fine
    assert evaluate(rule, disk(91), memory, now=1.0).firing
    ev = evaluate(rule, disk(85), memory, now=2.0)
    assert ev.firing
    assert ev.why == ("disk.used_percent = 85, not yet past clear threshold 80",)
    assert evaluate(rule, disk(80.5), memory, now=3.0).firing
    assert not evaluate(rule, disk(79), memory, now=4.0).firing
    assert not evaluate(rule, disk(85), memory, now=5.0).firing  # cleared: back to > 90


def test_hysteresis_for_a_falling_threshold() -> None:
    rule = Rule(Compare("when", "mem", "free_percent", "<", 5.0, clear=15.0))
    memory: RuleMemory = {}
    free = lambda v: res("mem", free_percent=v)  # noqa: E731
    assert not evaluate(rule, free(10), memory, now=0.0).firing
    assert evaluate(rule, free(4), memory, now=1.0).firing
    assert evaluate(rule, free(10), memory, now=2.0).firing
    assert not evaluate(rule, free(16), memory, now=3.0).firing
    assert not evaluate(rule, free(10), memory, now=4.0).firing


def test_hysteresis_does_not_bridge_missing_data() -> None:
    rule = Rule(DISK_HIGH)
    memory: RuleMemory = {}
    assert evaluate(rule, disk(95), memory, now=0.0).firing
    assert not evaluate(rule, res(error="statvfs failed"), memory, now=1.0).firing
    assert not evaluate(rule, disk(85), memory, now=2.0).firing


def test_hysteresis_zone_does_not_count_before_for_elapsed() -> None:
    rule = Rule(Compare("when", "disk", "used_percent", ">", 90.0, clear=80.0, for_=60.0))
    memory: RuleMemory = {}
    assert not evaluate(rule, disk(95), memory, now=0.0).firing
    assert not evaluate(rule, disk(85), memory, now=30.0).firing  # never fired yet
    assert not evaluate(rule, disk(95), memory, now=31.0).firing
    assert evaluate(rule, disk(95), memory, now=91.0).firing
    assert evaluate(rule, disk(85), memory, now=92.0).firing  # fired: hysteresis holds


# ---- combinators and `unless` ----------------------------------------------------------------

RESULTS = {
    "disk": CheckResult("disk", Status.CRITICAL, {"used_percent": 95.0}),
    "web": CheckResult("web", Status.OK, {"ok": 1.0}),
}
DISK_FULL = Compare("d", "disk", "used_percent", ">", 90.0)
WEB_DOWN = Compare("w", "web", "ok", "<", 1.0)


@pytest.mark.parametrize(
    ("cond", "firing"),
    [
        (AllOf("a", (DISK_FULL, WEB_DOWN)), False),
        (AllOf("a", (DISK_FULL, Not("n", WEB_DOWN))), True),
        (AnyOf("o", (DISK_FULL, WEB_DOWN)), True),
        (AnyOf("o", (WEB_DOWN, Not("n", DISK_FULL))), False),
        (Not("n", DISK_FULL), False),
        (Not("n", WEB_DOWN), True),
        (Not("n", Not("nn", DISK_FULL)), True),
        (
            AllOf(
                "a",
                (
                    AnyOf("o", (WEB_DOWN, DISK_FULL)),
                    StateIs("s", "disk", frozenset({Status.CRITICAL})),
                ),
            ),
            True,
        ),  # fmt: skip
    ],
)
def test_all_any_not(cond: AllOf | AnyOf | Not, firing: bool) -> None:
    assert evaluate(Rule(cond), RESULTS, {}, now=0.0).firing is firing


def test_all_evaluates_every_leaf_so_memory_and_observed_stay_current() -> None:
    # No short-circuit: a leaf's `for` clock keeps running even when an earlier leaf is false.
    slow = Compare("slow", "disk", "used_percent", ">", 90.0, for_=10.0)
    rule = Rule(AllOf("a", (WEB_DOWN, slow)))
    memory: RuleMemory = {}
    ev = evaluate(rule, RESULTS, memory, now=0.0)
    assert not ev.firing
    assert ev.observed == {"web.ok": 1.0, "disk.used_percent": 95.0}
    evaluate(rule, RESULTS, memory, now=10.0)
    assert memory["slow"].firing


def test_state_condition_matches_any_listed_state() -> None:
    cond = StateIs("s", "web", frozenset({Status.CRITICAL, Status.UNKNOWN}))
    for status, firing in [
        (Status.OK, False),
        (Status.WARNING, False),
        (Status.CRITICAL, True),
        (Status.UNKNOWN, True),
    ]:
        assert evaluate(Rule(cond), res("web", status), {}, now=0.0).firing is firing


def test_unless_context_is_reported_but_does_not_change_firing() -> None:
    rule = Rule(
        DISK_FULL,
        unless=(
            StateIs("u0", "web", frozenset({Status.OK})),
            Compare("u1", "web", "ok", "<", 1.0),
            AnyOf("u2", (Compare("u2a", "disk", "used_percent", ">", 50.0), WEB_DOWN)),
        ),
    )
    ev = evaluate(rule, RESULTS, {}, now=0.0)
    assert ev.firing
    assert ev.why == ("disk.used_percent = 95 > 90",)
    assert ev.context == ("web ok", "(disk.used_percent > 50 or web.ok < 1)")


def test_unless_holds_even_when_the_rule_does_not_fire() -> None:
    rule = Rule(WEB_DOWN, unless=(DISK_FULL,))
    ev = evaluate(rule, RESULTS, {}, now=0.0)
    assert not ev.firing
    assert ev.context == ("disk.used_percent > 90",)


# ---- missing data --------------------------------------------------------------------------


def test_missing_result_is_false() -> None:
    rule = Rule(Compare("when", "disk", "used_percent", ">", 90.0))
    ev = evaluate(rule, {}, {}, now=0.0)
    assert not ev.firing
    assert ev.observed == {}
    assert not evaluate(Rule(StateIs("s", "disk", frozenset(Status))), {}, {}, now=0.0).firing


def test_missing_metric_is_false() -> None:
    rule = Rule(Compare("when", "disk", "used_percent", ">", 90.0))
    ev = evaluate(rule, res("disk", Status.UNKNOWN, "statvfs: permission denied"), {}, now=0.0)
    assert not ev.firing
    assert ev.why == ()
    assert ev.observed == {}


def test_not_over_missing_data_is_true() -> None:
    # Missing data is false, so its negation holds: "web is not answering" when web has no
    # value. Rules that must not act on missing data say so with a state condition on UNKNOWN.
    rule = Rule(AnyOf("o", (DISK_FULL, Not("n", Compare("x", "web", "ok", ">=", 1.0)))))
    assert evaluate(rule, res("disk", used_percent=10.0), {}, now=0.0).firing


def test_problem_cleared_does_not_count_missing_data_as_fixed() -> None:
    """A check that errors after the steps (UNKNOWN, no metrics) is not evidence of a fix."""
    rule = Rule(Compare("when", "disk", "used_percent", ">", 90.0, for_=300.0))
    cleared, why = problem_cleared(rule, res("disk", Status.UNKNOWN, "check timed out"))
    assert not cleared
    assert "timed out" in why


# ---- problem_cleared (verification) --------------------------------------------------------


def test_problem_cleared_ignores_for_and_memory() -> None:
    rule = Rule(Compare("when", "disk", "used_percent", ">", 90.0, clear=80.0, for_=600.0))
    assert problem_cleared(rule, disk(95)) == (False, "disk.used_percent = 95 > 90")
    # In the hysteresis band: verification asks about the problem itself, not the alert state.
    assert problem_cleared(rule, disk(85)) == (True, "")
    assert problem_cleared(rule, disk(50)) == (True, "")


def test_problem_cleared_with_combinators() -> None:
    rule = Rule(AllOf("a", (DISK_FULL, StateIs("s", "web", frozenset({Status.OK})))))
    assert problem_cleared(rule, RESULTS) == (
        False,
        "disk.used_percent = 95 > 90; web is ok",
    )
    down = {**RESULTS, "web": CheckResult("web", Status.CRITICAL, {"ok": 0.0})}
    assert problem_cleared(rule, down)[0] is True


# ---- compare, thresholds, describe ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "op", "target", "expected"),
    [
        (5.0, ">", 4, True),
        (4.0, ">=", 4, True),
        (3, "<", 4.0, True),
        (4.0, "<=", 3, False),
        (1.0, "==", 1, True),
        (1.0, "!=", 1, False),
        ("active", "==", "active", True),
        ("failed", "!=", "active", True),
        ("5", "==", 5.0, False),  # text compares as text: "5" != "5.0"
        ("high", ">", "low", False),  # ordering ops never apply to text
        (5.0, ">", "4", False),
    ],
)
def test_compare(value: MetricValue, op: str, target: MetricValue, expected: bool) -> None:
    assert compare(value, op, target) is expected


def test_text_state_conditions_through_evaluate() -> None:
    rule = Rule(Compare("w", "svc", "sub_state", "==", "failed"))
    assert evaluate(rule, res("svc", sub_state="failed"), {}, now=0.0).firing
    assert not evaluate(rule, res("svc", sub_state="running"), {}, now=0.0).firing


def test_threshold_status() -> None:
    warning = Threshold("used_percent", ">", 80.0)
    critical = Threshold("used_percent", ">", 90.0)
    assert threshold_status({"used_percent": 95.0}, warning, critical) is Status.CRITICAL
    assert threshold_status({"used_percent": 85.0}, warning, critical) is Status.WARNING
    assert threshold_status({"used_percent": 80.0}, warning, critical) is Status.OK
    assert threshold_status({"used_percent": 85.0}, None, critical) is Status.OK
    assert threshold_status({"other": 1.0}, warning, critical) is Status.UNKNOWN
    assert threshold_status({}, None, None) is Status.OK


def test_describe() -> None:
    assert describe(DISK_FULL) == "disk.used_percent > 90"
    assert describe(Compare("c", "load", "load1", ">=", 2.5)) == "load.load1 >= 2.5"
    assert describe(StateIs("s", "web", frozenset({Status.UNKNOWN, Status.CRITICAL}))) == (
        "web critical/unknown"
    )
    assert describe(Not("n", WEB_DOWN)) == "not (web.ok < 1)"
    assert describe(AllOf("a", (DISK_FULL, AnyOf("o", (WEB_DOWN, Not("n", DISK_FULL)))))) == (
        "(disk.used_percent > 90 and (web.ok < 1 or not (disk.used_percent > 90)))"
    )


# ---- properties ----------------------------------------------------------------------------

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
OPS_ALL = {**OPS, "==": operator.eq, "!=": operator.ne}
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(value=st.floats(width=64), target=finite, op=st.sampled_from(sorted(OPS_ALL)))
def test_without_for_or_clear_evaluate_is_the_plain_comparison(
    value: float, target: float, op: str
) -> None:
    rule = Rule(Compare("when", "m", "x", op, target))
    ev = evaluate(rule, res("m", x=value), {}, now=0.0)
    assert ev.firing is OPS_ALL[op](value, target)
    if not math.isnan(value):
        assert ev.observed == {"m.x": value}


@given(
    trigger=finite,
    gap=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    values=st.lists(finite, min_size=1, max_size=30),
    op=st.sampled_from([">", ">=", "<", "<="]),
)
def test_hysteresis_never_fires_from_cleared_without_crossing_the_trigger(
    trigger: float, gap: float, values: list[float], op: str
) -> None:
    rising = op in (">", ">=")
    clear = trigger - gap if rising else trigger + gap
    rule = Rule(Compare("when", "m", "x", op, trigger, clear=clear))
    memory: RuleMemory = {}
    firing = False
    for now, value in enumerate(values):
        firing_now = evaluate(rule, res("m", x=value), memory, now=float(now)).firing
        if not firing:
            # From a cleared state only a value past the trigger can fire.
            assert firing_now is OPS[op](value, trigger)
        elif firing_now:
            # Once firing, it stays so until the value is past `clear`.
            held = value > clear if rising else value < clear
            assert held or OPS[op](value, trigger)
        else:
            assert not OPS[op](value, trigger)
            assert value <= clear if rising else value >= clear
        firing = firing_now


@given(
    hold=st.floats(min_value=0.0, max_value=1e4, allow_nan=False),
    steps=st.lists(
        st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=100.0)), max_size=40
    ),
)
def test_for_fires_exactly_when_held_long_enough(
    hold: float, steps: list[tuple[bool, float]]
) -> None:
    rule = Rule(Compare("when", "m", "x", ">", 0.0, for_=hold))
    memory: RuleMemory = {}
    now = 0.0
    since: float | None = None
    for true, dt in steps:
        now += dt
        since = (now if since is None else since) if true else None
        firing = evaluate(rule, res("m", x=1.0 if true else -1.0), memory, now=now).firing
        assert firing is (since is not None and now - since >= hold)
