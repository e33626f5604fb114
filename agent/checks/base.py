"""The contract every check type follows.

A check type is an entry in ``agent.checks.CHECK_TYPES``: it parses its own YAML keys into a typed,
frozen config (``parse``) and builds a ``Check`` from it (``build``). Parsing happens at policy load
time, so an unknown key or a bad value is reported with its file and path before anything runs.

``Check.sample()`` takes one measurement and returns raw metrics. It may raise; the runner wraps
every call in one boundary that turns exceptions and timeouts into an UNKNOWN result, records the
duration, and never lets one check stop the loop. The check's status (OK/WARNING/CRITICAL) is then
derived from the policy's ``warning``/``critical`` thresholds or the type's default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agent.checks.proctable import ProcessTable
    from agent.policy.fields import Fields

MetricValue = float | str


class Status(IntEnum):
    """Nagios/Monitoring Plugins states, in their exit-code order."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


STATUS_BY_NAME = {s.label: s for s in Status}


@dataclass(frozen=True)
class Sample:
    """What ``Check.sample()`` returns: metrics plus an optional status and human summary.

    ``status`` is set only by checks that know their own state (the Nagios contract of a command
    check); for the rest the runner derives it from thresholds.
    """

    metrics: Mapping[str, MetricValue]
    summary: str = ""
    status: Status | None = None


@dataclass(frozen=True)
class CheckResult:
    """One evaluated sample of one check, as the rule engine and the journal see it."""

    check: str
    status: Status
    metrics: Mapping[str, MetricValue] = field(default_factory=dict)
    summary: str = ""
    error: str | None = None
    duration: float = 0.0
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status.label,
            "metrics": dict(self.metrics),
            "summary": self.summary,
            "error": self.error,
            "duration_ms": round(self.duration * 1000, 1),
            "at": self.at,
        }


@dataclass
class CheckEnv:
    """What checks may use from the host: a root prefix for paths and the shared process table."""

    root: Path
    processes: ProcessTable

    def host_path(self, path: str) -> Path:
        """Map an absolute host path under the root prefix (``/host`` in a DaemonSet)."""
        if str(self.root) in ("", "/"):
            return Path(path)
        return self.root / path.lstrip("/")


def describe_error(exc: BaseException) -> str:
    """A short, human reason for a failed connection or read, for a check's summary."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc)
    return text or type(exc).__name__


class Check(Protocol):
    def sample(self) -> Sample:
        """Take one measurement. May raise; the runner turns that into UNKNOWN."""
        ...


@runtime_checkable
class WatchesPids(Protocol):
    """A check that can name the processes it follows (``process`` with ``watch: true``).

    The runner asks after each sample and hands the pids to ``agent.pidwatch.PidWatcher``, so a
    dying process triggers a re-check at once instead of at the next interval.
    """

    def watched_pids(self) -> set[int]: ...


@dataclass(frozen=True)
class Threshold:
    """``metric op value``, used for check status thresholds (``warning:``/``critical:``)."""

    metric: str
    op: str
    value: MetricValue


@dataclass(frozen=True)
class CheckType:
    name: str
    parse: Callable[[Fields], Any]
    build: Callable[[Any, CheckEnv], Check]
    metrics: frozenset[str] | None
    """Metric names the type always returns; None when dynamic (perfdata, scraped samples)."""
    default_critical: Threshold | None = None
    """Status rule used when the policy gives no ``critical:`` threshold."""
    description: str = ""
