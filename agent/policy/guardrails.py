"""The sections around a remediation: ``verify`` (how long to wait and look before calling it
fixed), ``guardrails`` (cooldown, budget, circuit breaker, approval TTL, maintenance windows)
and ``escalation`` (which configured sinks to page, how often to repeat).

``parse_window`` is shared with the agent config, whose host-wide maintenance windows have the
same syntax.
"""

from __future__ import annotations

import re
from typing import Any

from agent.policy.fields import ErrorSink, Fields
from agent.policy.model import Budget, Escalation, Guardrails, Verification, Window
from agent.policy.secrecy import no_sink_settings

DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


def parse_verification(f: Fields) -> Verification:
    v = Verification(
        settle=f.duration("settle", "2s"),
        timeout=f.duration("timeout", "30s", minimum=0.1),
        interval=f.duration("interval", "1s", minimum=0.1),
    )
    f.done()
    return v


def parse_guardrails(f: Fields) -> Guardrails:
    cooldown = f.duration("cooldown", "5m")
    b = f.section("budget")
    budget = Budget(b.integer("max", 3, minimum=1), b.duration("per", "1h", minimum=1))
    b.done()
    br = f.section("breaker")
    breaker_after = br.integer("after", 3, minimum=1)
    br.done()
    ttl = f.duration("approval_ttl", "1h", minimum=1)
    windows = f.items("maintenance", lambda item, path: parse_window(item, path, f.sink))
    f.done()
    return Guardrails(cooldown, budget, breaker_after, ttl, tuple(windows))


def parse_window(raw: Any, path: str, sink: ErrorSink) -> Window | None:
    """``{days: [sat, sun], start: "02:00", end: "04:00"}`` (UTC) or ``{from: ISO, to: ISO}``."""
    from datetime import datetime

    f = Fields(raw, path, sink)
    name = f.string("name", "")
    if f.has("from") or f.has("to"):
        stamps = []
        for key in ("from", "to"):
            value = f.get(key)
            try:
                stamp = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
                if stamp.tzinfo is None:
                    f.error(key, "give a timezone, e.g. 2026-11-24T02:00:00+00:00")
                stamps.append(stamp.timestamp())
            except ValueError:
                f.error(key, "expected an ISO 8601 timestamp, e.g. 2026-11-24T02:00:00+00:00")
        f.done()
        if len(stamps) != 2:
            return None
        if stamps[1] <= stamps[0]:
            sink.add(path, "'to' must be after 'from'")
        return Window(start_at=stamps[0], end_at=stamps[1], name=name)
    days = f.str_list("days", ())
    bad = [d for d in days if d[:3].lower() not in DAYS]
    if bad:
        f.error("days", f"unknown day {bad[0]!r}; use mon, tue, wed, thu, fri, sat, sun")
    start = _minute_of_day(f, "start")
    end = _minute_of_day(f, "end")
    f.done()
    if start is None or end is None or bad:
        return None
    chosen = frozenset(DAYS[d[:3].lower()] for d in days) if days else frozenset(range(7))
    return Window(days=chosen, start_minute=start, end_minute=end, name=name)


def _minute_of_day(f: Fields, key: str) -> int | None:
    value = f.get(key)
    # YAML 1.1 reads an unquoted 02:00 as a base-60 integer (120). An unquoted 25:00 is 1500,
    # no time of day: it falls through to the error below rather than silently dropping the window.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1440:
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}", value):
        hours, minutes = (int(x) for x in value.split(":"))
        if hours < 24 and minutes < 60:
            return hours * 60 + minutes
    if value is not None:
        f.error(key, "expected a time of day as HH:MM (UTC)")
    return None


def parse_escalation(f: Fields) -> Escalation:
    no_sink_settings(f)
    e = Escalation(sinks=f.str_list("sinks", ()), repeat=f.duration("repeat", "1h", minimum=1))
    f.done()
    return e
