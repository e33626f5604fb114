"""Small pure guardrail computations: maintenance windows, storm detection, budgets."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.policy.model import Window


def active_window(windows: Iterable[Window], now: float) -> Window | None:
    """The first maintenance window that contains wall time ``now`` (UTC), if any."""
    moment = time.gmtime(now)
    minute = moment.tm_hour * 60 + moment.tm_min
    weekday = moment.tm_wday
    for window in windows:
        if window.start_at is not None and window.end_at is not None:
            if window.start_at <= now < window.end_at:
                return window
            continue
        if window.start_minute is None or window.end_minute is None:
            continue
        start, end = window.start_minute, window.end_minute
        if start <= end:
            if weekday in window.days and start <= minute < end:
                return window
        else:
            # Crosses midnight: 22:00-02:00 belongs to the day it started.
            yesterday = (weekday - 1) % 7
            if (weekday in window.days and minute >= start) or (
                yesterday in window.days and minute < end
            ):
                return window
    return None


def window_end(window: Window, now: float) -> float:
    """Wall time at which ``window`` (active at ``now``) closes."""
    if window.end_at is not None:
        return window.end_at
    moment = time.gmtime(now)
    minute = moment.tm_hour * 60 + moment.tm_min
    end = window.end_minute or 0
    delta = (end - minute) % 1440 or 1440
    return now - (now % 60) + delta * 60


@dataclass(frozen=True)
class StormGuard:
    """Stop automating when more than ``percent`` of policies fire at once (and at least
    ``min_firing`` do): that is one widespread problem, not N local ones."""

    percent: float = 50.0
    min_firing: int = 3

    def tripped(self, firing: int, total: int) -> bool:
        if total <= 0 or firing < self.min_firing:
            return False
        return firing * 100.0 / total > self.percent


def budget_until(
    attempts: Sequence[float], max_runs: int, window: float, now: float
) -> float | None:
    """If ``max_runs`` attempts already started within ``window`` seconds, when the next is
    allowed (the oldest counted attempt ages out); otherwise None."""
    recent = sorted(t for t in attempts if t > now - window)
    if len(recent) < max_runs:
        return None
    return recent[len(recent) - max_runs] + window
