"""The Toil page's Pareto chart as inline SVG geometry (no JavaScript, no chart library).

Horizontal bars, most frequent first, each as long as its count relative to the top one, with a
cumulative-share marker: the few bars that make up most of the total are the problems to fix for
good. The template draws what :func:`pareto_bars` computes, so the arithmetic is testable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.duration import format_duration
from controlplane.pareto import ParetoRow

ROW = 28
LABEL_WIDTH = 220
BAR_WIDTH = 420
WIDTH = LABEL_WIDTH + BAR_WIDTH + 170


@dataclass(frozen=True)
class Bar:
    label: str
    y: int
    width: float
    count: int
    cumulative: float
    """Share of all counts up to and including this bar (0..1)."""
    marker_x: float
    fixed_rate: float
    mttr: str
    toil_saved_minutes: float
    tone: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    height: int
    width: int = WIDTH
    label_width: int = LABEL_WIDTH
    bar_width: int = BAR_WIDTH
    total: int = 0
    toil_saved_minutes: float = 0.0


def pareto_bars(rows: Sequence[ParetoRow], by_host: bool = False) -> Chart:
    total = sum(r.count for r in rows)
    top = max((r.count for r in rows), default=0) or 1
    bars, running = [], 0
    for i, r in enumerate(rows):
        running += r.count
        share = running / total if total else 0.0
        bars.append(
            Bar(
                label=f"{r.host} / {r.policy}" if by_host else r.policy,
                y=i * ROW,
                width=round(BAR_WIDTH * r.count / top, 1),
                count=r.count,
                cumulative=share,
                marker_x=round(LABEL_WIDTH + BAR_WIDTH * share, 1),
                fixed_rate=r.fixed_rate,
                mttr=format_duration(r.mttr_seconds) if r.mttr_seconds else "-",
                toil_saved_minutes=r.toil_saved_minutes,
                tone="ok" if r.fixed_rate >= 0.9 else ("warn" if r.fixed_rate >= 0.5 else "bad"),
            )
        )
    return Chart(
        bars=bars,
        height=max(ROW, len(bars) * ROW),
        total=total,
        toil_saved_minutes=sum(r.toil_saved_minutes for r in rows),
    )
