"""The ``spec.rule`` section: ``when`` and ``unless`` conditions, checked against the policy's
own checks. A condition is exactly one of ``all``/``any``/``not`` or a ``check`` leaf; a leaf
names a check of this policy, a metric its type produces (or a ``state``), and a ``clear``
(hysteresis) on the side of ``value`` that lets the condition clear.
"""

from __future__ import annotations

from typing import Any

from agent.checks import CHECK_TYPES
from agent.checks.base import STATUS_BY_NAME
from agent.policy.check_specs import OPS
from agent.policy.fields import ErrorSink, Fields
from agent.policy.model import AllOf, AnyOf, CheckSpec, Compare, Condition, Not, Rule, StateIs


def parse_rule(f: Fields, checks: dict[str, CheckSpec]) -> Rule | None:
    if not f.ok:
        return None
    when = _condition(f.get("when"), f.at("when"), f.sink, checks)
    unless: list[Condition] = f.items(
        "unless", lambda item, path: _condition(item, path, f.sink, checks)
    )
    f.done()
    if when is None:
        return None
    return Rule(when=when, unless=tuple(unless))


def _condition(
    raw: Any, path: str, sink: ErrorSink, checks: dict[str, CheckSpec]
) -> Condition | None:
    if raw is None:
        return None
    f = Fields(raw, path, sink)
    if not f.ok:
        return None
    combinators = [k for k in ("all", "any", "not") if f.has(k)]
    if len(combinators) > 1 or (combinators and f.has("check")):
        sink.add(path, "use exactly one of 'all', 'any', 'not' or 'check' per condition")
        return None
    if combinators == ["not"]:
        item = _condition(f.get("not"), f.at("not"), sink, checks)
        f.done()
        return Not(path, item) if item is not None else None
    if combinators:
        key = combinators[0]
        items: list[Condition] = f.items(
            key, lambda i, p: _condition(i, p, sink, checks), required=True
        )
        f.done()
        if not items:
            if not f.raw.get(key):
                sink.add(f.at(key), "needs at least one condition")
            return None
        return AllOf(path, tuple(items)) if key == "all" else AnyOf(path, tuple(items))
    if not f.has("check"):
        sink.add(
            path,
            "a condition needs 'check' (with 'metric'/'op'/'value' or 'state'), "
            "or one of 'all', 'any', 'not'",
        )
        return None
    check = f.string("check")
    spec = checks.get(check) if isinstance(check, str) else None
    if isinstance(check, str) and spec is None:
        f.error("check", f"no check named {check!r} in spec.checks; known: {', '.join(checks)}")
    hold = f.duration("for", 0.0)
    if f.has("state"):
        states = f.str_list("state")
        bad = [s for s in states or () if s not in STATUS_BY_NAME]
        if bad:
            f.error("state", f"unknown state {bad[0]!r}; use ok, warning, critical or unknown")
        f.done()
        if bad or not states or spec is None:
            return None
        return StateIs(path, spec.name, frozenset(STATUS_BY_NAME[s] for s in states), hold)
    metric = f.string("metric")
    op = f.choice("op", OPS)
    value = f.typed("value", (int, float, str))
    clear = f.number("clear", None)
    f.done()
    if spec is not None and isinstance(metric, str):
        known = CHECK_TYPES[spec.type].metrics
        if known is not None and metric not in known:
            f.error(
                "metric",
                f"check {check!r} ({spec.type}) has no metric {metric!r}; "
                f"known: {', '.join(sorted(known))}",
            )
    if clear is not None:
        if op not in (">", ">=", "<", "<="):
            f.error("clear", "'clear' (hysteresis) needs an ordering op: >, >=, < or <=")
        elif isinstance(value, int | float) and (op in (">", ">=")) != (clear <= value):
            side = "at or below" if op in (">", ">=") else "at or above"
            f.error("clear", f"must be {side} 'value' ({value}) so the condition can clear")
    if isinstance(value, str) and op not in ("==", "!="):
        f.error("value", f"a text value only works with == or !=, not {op}")
    if spec is None or metric is None or op is None or value is None:
        return None
    return Compare(path, spec.name, metric, op, value, clear, hold)
