"""Evaluate a policy's rule against the latest check results. Pure and deterministic.

Conditions are data (parsed from YAML into ``agent.policy.model``), never code: there is no eval.
Two pieces of memory make rules behave like Prometheus alerts rather than flapping booleans:

- ``for``: a leaf condition must hold continuously for that long before it counts as true;
- ``clear`` (hysteresis): once a threshold condition fired, it stays true until the value crosses
  back past ``clear``, e.g. fire above 90 % disk, clear only at or below 80 %.

That memory is a plain dict owned by the caller, passed in and returned, so a test can drive the
function with a fake clock and inspect every step.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.checks.base import CheckResult, MetricValue, Status, Threshold
from agent.policy.model import AllOf, AnyOf, Compare, Condition, Not, Rule, StateIs

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass
class LeafMemory:
    since: float | None = None
    """Monotonic time the raw condition started holding."""
    firing: bool = False
    """Whether the leaf counted as true at the last evaluation (for hysteresis)."""


RuleMemory = dict[str, LeafMemory]


@dataclass(frozen=True)
class Evaluation:
    firing: bool
    why: tuple[str, ...] = ()
    """Plain-words account of the leaves that decided the outcome."""
    context: tuple[str, ...] = ()
    """Descriptions of ``unless`` conditions that hold (non-empty means: do not act)."""
    observed: Mapping[str, MetricValue] = field(default_factory=dict)
    """Every value the rule looked at, as ``check.metric`` -> value, for the journal."""


def compare(value: MetricValue, op: str, target: MetricValue) -> bool:
    """Compare like with like: numbers with numbers, text with text (== / != only)."""
    if isinstance(target, str) or isinstance(value, str):
        if op not in ("==", "!="):
            return False
        return _OPS[op](str(value), str(target))
    return _OPS[op](float(value), float(target))


def threshold_status(
    metrics: Mapping[str, MetricValue], warning: Threshold | None, critical: Threshold | None
) -> Status:
    """A check's status from its ``warning``/``critical`` thresholds (missing metric: UNKNOWN)."""
    for level, threshold in ((Status.CRITICAL, critical), (Status.WARNING, warning)):
        if threshold is None:
            continue
        if threshold.metric not in metrics:
            return Status.UNKNOWN
        if compare(metrics[threshold.metric], threshold.op, threshold.value):
            return level
    return Status.OK


def evaluate(
    rule: Rule, results: Mapping[str, CheckResult], memory: RuleMemory, now: float
) -> Evaluation:
    """Evaluate ``rule`` at monotonic time ``now``; updates ``memory`` in place."""
    why: list[str] = []
    observed: dict[str, MetricValue] = {}
    firing = _eval(rule.when, results, memory, now, why, observed)
    context: list[str] = []
    for cond in rule.unless:
        held: list[str] = []
        if _eval(cond, results, memory, now, held, observed):
            context.append(describe(cond))
    return Evaluation(firing, tuple(why), tuple(context), observed)


def problem_cleared(rule: Rule, results: Mapping[str, CheckResult]) -> tuple[bool, str]:
    """Verification: does the ``when`` condition hold on fresh results, ignoring ``for`` and
    hysteresis memory? A remediation counts as fixed only when this returns True."""
    missing = _missing(rule.when, results)
    if missing:
        # No data is not evidence of a fix: keep verifying until every check reports a value.
        return False, "no data for " + "; ".join(missing)
    why: list[str] = []
    still = _eval(rule.when, results, {}, 0.0, why, {}, instant=True)
    return (not still), "; ".join(why)


def _missing(cond: Condition, results: Mapping[str, CheckResult]) -> list[str]:
    """Leaves of ``cond`` whose check has no result or whose metric is absent."""
    if isinstance(cond, AllOf | AnyOf):
        return [m for c in cond.items for m in _missing(c, results)]
    if isinstance(cond, Not):
        return _missing(cond.item, results)
    result = results.get(cond.check)
    if result is None:
        return [f"{cond.check} (no result)"]
    if isinstance(cond, StateIs):
        return (
            []
            if result.status is not Status.UNKNOWN or Status.UNKNOWN in cond.states
            else [f"{cond.check} ({result.error or 'unknown'})"]
        )
    if cond.metric not in result.metrics:
        return [f"{cond.check}.{cond.metric} ({result.error or 'no value'})"]
    return []


def _eval(
    cond: Condition,
    results: Mapping[str, CheckResult],
    memory: RuleMemory,
    now: float,
    why: list[str],
    observed: dict[str, MetricValue],
    instant: bool = False,
) -> bool:
    if isinstance(cond, AllOf):
        parts = [_eval(c, results, memory, now, why, observed, instant) for c in cond.items]
        return all(parts)
    if isinstance(cond, AnyOf):
        parts = [_eval(c, results, memory, now, why, observed, instant) for c in cond.items]
        return any(parts)
    if isinstance(cond, Not):
        inner: list[str] = []
        return not _eval(cond.item, results, memory, now, inner, observed, instant)
    raw, text = _leaf(cond, results, memory, observed)
    if instant:
        if raw:
            why.append(text)
        return raw
    mem = memory.setdefault(cond.id, LeafMemory())
    if not raw:
        mem.since, mem.firing = None, False
        return False
    if mem.since is None:
        mem.since = now
    held = now - mem.since
    mem.firing = held >= cond.for_
    if mem.firing:
        why.append(text + (f" for {held:.0f}s" if cond.for_ else ""))
    return mem.firing


def _leaf(
    cond: Compare | StateIs,
    results: Mapping[str, CheckResult],
    memory: RuleMemory,
    observed: dict[str, MetricValue],
) -> tuple[bool, str]:
    result = results.get(cond.check)
    if result is None:
        return False, f"{cond.check}: no result yet"
    if isinstance(cond, StateIs):
        observed[f"{cond.check}.status"] = result.status.label
        return result.status in cond.states, f"{cond.check} is {result.status.label}"
    if cond.metric not in result.metrics:
        return False, f"{cond.check}.{cond.metric} unknown ({result.error or 'no value'})"
    value = result.metrics[cond.metric]
    observed[f"{cond.check}.{cond.metric}"] = value
    text = f"{cond.check}.{cond.metric} = {_fmt(value)} {cond.op} {_fmt(cond.value)}"
    if compare(value, cond.op, cond.value):
        return True, text
    prev = memory.get(cond.id)
    if cond.clear is not None and prev is not None and prev.firing and not isinstance(value, str):
        # Hysteresis: still firing until the value is past the clear threshold.
        rising = cond.op in (">", ">=")
        not_cleared = float(value) > cond.clear if rising else float(value) < cond.clear
        if not_cleared:
            return (
                True,
                f"{cond.check}.{cond.metric} = {_fmt(value)}, not yet past clear "
                f"threshold {_fmt(cond.clear)}",
            )
    return False, text


def describe(cond: Condition) -> str:
    """Short plain-words form of a condition, used in suppression reasons."""
    if isinstance(cond, StateIs):
        return f"{cond.check} {'/'.join(sorted(s.label for s in cond.states))}"
    if isinstance(cond, Compare):
        return f"{cond.check}.{cond.metric} {cond.op} {_fmt(cond.value)}"
    if isinstance(cond, Not):
        return f"not ({describe(cond.item)})"
    joiner = " and " if isinstance(cond, AllOf) else " or "
    return "(" + joiner.join(describe(c) for c in cond.items) + ")"


def _fmt(value: MetricValue | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
