"""``cpu``, ``load`` and ``memory``: the host's pressure gauges, read from the kernel's counters.

None of them has a default critical threshold: what counts as too busy depends on the host, so a
policy says it (``critical: {metric: used_percent, op: ">", value: 95}``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from agent.checks.base import Check, CheckEnv, CheckType, Sample
from agent.policy.fields import Fields


@dataclass(frozen=True)
class NoConfig:
    """These types take no keys of their own."""


def parse_nothing(f: Fields) -> NoConfig:
    return NoConfig()


# ---- cpu ---------------------------------------------------------------------------------------


class CpuCheck:
    """Busy CPU percent (all CPUs) since the previous sample of this check.

    ``psutil.cpu_percent(interval=None)`` keeps one module-wide baseline, so two callers (two
    policies with a cpu check, or a plugin) would shorten each other's interval to almost nothing.
    Each check keeps its own baseline of ``psutil.cpu_times()`` instead, primed when it is built,
    and computes busy time as psutil does: everything but idle and iowait, guest time excluded
    because the kernel already counts it in user time.
    """

    def __init__(self, times: Callable[[], Any] = psutil.cpu_times) -> None:
        self._times = times
        self._last = self._read()
        self._percent = 0.0

    def _read(self) -> tuple[float, float]:
        t = self._times()
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        idle = t.idle + getattr(t, "iowait", 0.0)
        return total, total - idle

    def sample(self) -> Sample:
        total, busy = self._read()
        d_total, d_busy = total - self._last[0], busy - self._last[1]
        # Counters that did not move (two samples within one clock tick) keep the last value.
        if d_total > 0:
            self._percent = round(min(100.0, max(0.0, d_busy / d_total * 100.0)), 2)
            self._last = (total, busy)
        return Sample({"percent": self._percent}, f"{self._percent:.1f}% busy")


def _build_cpu(config: NoConfig, env: CheckEnv) -> Check:
    return CpuCheck()


CPU = CheckType(
    name="cpu",
    parse=parse_nothing,
    build=_build_cpu,
    metrics=frozenset({"percent"}),
    description="Busy CPU percent over all CPUs since the previous sample.",
)


# ---- load --------------------------------------------------------------------------------------


class LoadCheck:
    """Load averages, and the 1-minute one per CPU so one threshold fits hosts of every size."""

    def sample(self) -> Sample:
        load1, load5, load15 = os.getloadavg()
        cpus = psutil.cpu_count() or 1
        return Sample(
            {
                "load1": round(load1, 2),
                "load5": round(load5, 2),
                "load15": round(load15, 2),
                "load1_per_cpu": round(load1 / cpus, 3),
            },
            f"load {load1:.2f} {load5:.2f} {load15:.2f} on {cpus} CPUs",
        )


def _build_load(config: NoConfig, env: CheckEnv) -> Check:
    return LoadCheck()


LOAD = CheckType(
    name="load",
    parse=parse_nothing,
    build=_build_load,
    metrics=frozenset({"load1", "load5", "load15", "load1_per_cpu"}),
    description="1, 5 and 15 minute load averages, and load1 divided by the CPU count.",
)


# ---- memory ------------------------------------------------------------------------------------


class MemoryCheck:
    """RAM and swap use. ``available_bytes`` is the kernel's MemAvailable estimate, the number
    that says whether a new process fits, unlike "free", which ignores reclaimable cache."""

    def sample(self) -> Sample:
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        return Sample(
            {
                "used_percent": round(float(vm.percent), 2),
                "available_bytes": float(vm.available),
                "swap_used_percent": round(float(swap.percent), 2),
                "swap_used_bytes": float(swap.used),
            },
            f"{vm.percent:.1f}% used, {vm.available // (1 << 20)} MiB available, "
            f"swap {swap.percent:.1f}%",
        )


def _build_memory(config: NoConfig, env: CheckEnv) -> Check:
    return MemoryCheck()


MEMORY = CheckType(
    name="memory",
    parse=parse_nothing,
    build=_build_memory,
    metrics=frozenset({"used_percent", "available_bytes", "swap_used_percent", "swap_used_bytes"}),
    description="Memory used percent, available bytes, and swap use.",
)
