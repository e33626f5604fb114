"""The ``spec.checks`` section: each check's type (from the ``CHECK_TYPES`` registry), schedule,
type-specific config and warning/critical thresholds. An unknown type is reported once, without
its keys (they are unknowable); a threshold's metric must be one the check type produces.
"""

from __future__ import annotations

import re

from agent.checks import CHECK_TYPES
from agent.checks.base import Threshold
from agent.policy.fields import Fields, join
from agent.policy.model import CheckSpec

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
OPS = {
    ">": ">",
    "gt": ">",
    ">=": ">=",
    "ge": ">=",
    "<": "<",
    "lt": "<",
    "<=": "<=",
    "le": "<=",
    "==": "==",
    "eq": "==",
    "!=": "!=",
    "ne": "!=",
}
MIN_INTERVAL = 1.0


def parse_checks(spec: Fields) -> list[CheckSpec]:
    raw = spec.get("checks")
    if raw is None:
        return []
    if not isinstance(raw, dict) or not raw:
        spec.error("checks", "expected a non-empty mapping of check name to check")
        return []
    out = []
    for name, body in raw.items():
        path = join(spec.at("checks"), str(name))
        if not isinstance(name, str) or not NAME_RE.match(name.replace("_", "-")):
            spec.sink.add(path, "check names use letters, digits, '_' or '-'")
            continue
        check = _check(name, Fields(body, path, spec.sink))
        if check is not None:
            out.append(check)
    return out


def _check(name: str, f: Fields) -> CheckSpec | None:
    if not f.ok:
        return None
    type_name = f.string("type")
    interval = f.duration("interval", "10s", minimum=MIN_INTERVAL)
    timeout = f.duration("timeout", "10s", minimum=0.1)
    ctype = CHECK_TYPES.get(type_name) if isinstance(type_name, str) else None
    if isinstance(type_name, str) and ctype is None:
        f.error("type", f"unknown check type {type_name!r}; known: {', '.join(CHECK_TYPES)}")
    config = ctype.parse(f) if ctype else None
    metrics = ctype.metrics if ctype else None
    warning = _threshold(f, "warning", metrics)
    critical = _threshold(f, "critical", metrics)
    if ctype is not None:
        f.done()  # with an unknown type its own keys are unknowable: report the type only
    if ctype is None:
        return None
    return CheckSpec(
        name=name,
        type=ctype.name,
        config=config,
        interval=interval,
        timeout=timeout,
        warning=warning,
        critical=critical,
    )


def _threshold(f: Fields, key: str, metrics: frozenset[str] | None) -> Threshold | None:
    if not f.has(key):
        f.get(key, None)
        return None
    t = f.section(key)
    metric = t.string("metric")
    op = t.choice("op", OPS)
    value = t.typed("value", (int, float, str))
    t.done()
    if metrics is not None and isinstance(metric, str) and metric not in metrics:
        t.error("metric", f"unknown metric {metric!r}; known: {', '.join(sorted(metrics))}")
    if metric is None or op is None or value is None:
        return None
    return Threshold(metric=metric, op=op, value=value)
