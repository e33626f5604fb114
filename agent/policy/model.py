"""The policy model: frozen dataclasses, built only by ``agent.policy.loader`` (via ``document``).

A policy says: which hosts (selector), what to watch (checks), when it is a problem (rule), what an
engineer would type (remediation steps), how to tell it worked (verification), how far automation
may go (guardrails, mode) and who to call when it gives up (escalation).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent.checks.base import MetricValue, Status, Threshold

API_VERSION = "stanch.dev/v1"
KIND = "Policy"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Mode(StrEnum):
    OBSERVE = "observe"
    """Decide and record, never act."""
    APPROVE = "approve"
    """Wait for ``stanch-agent approve <id>``; the request expires."""
    AUTO = "auto"


# ---- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    """``check.metric op value`` held ``for`` seconds; with ``clear``, it stays firing until the
    value crosses back past ``clear`` (hysteresis: fire above 90, clear below 80)."""

    id: str
    check: str
    metric: str
    op: str
    value: MetricValue
    clear: float | None = None
    for_: float = 0.0


@dataclass(frozen=True)
class StateIs:
    """The named check's status is one of ``states`` (held ``for`` seconds)."""

    id: str
    check: str
    states: frozenset[Status]
    for_: float = 0.0


@dataclass(frozen=True)
class AllOf:
    id: str
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    id: str
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    id: str
    item: Condition


Condition = Compare | StateIs | AllOf | AnyOf | Not


@dataclass(frozen=True)
class Rule:
    when: Condition
    """The problem: when this holds, the policy fires."""
    unless: tuple[Condition, ...] = ()
    """Context: when any of these holds, do not act; escalate instead."""


# ---- remediation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunAs:
    """``run_as``: the account a step runs under, by name as written in the policy. The host
    resolves it (``agent.runas``): the same bundle runs on hosts whose uids differ."""

    user: str
    group: str | None = None
    """None: the user's primary group. Supplementary groups are the user's own (initgroups)."""
    path: str = ""
    """Where the policy set it (``spec.remediation.run_as``), for errors."""


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    """With ``shell`` true, a single element: the shell script, run by ``/bin/sh -c``."""
    shell: bool = False
    timeout: float = 30.0
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    continue_on_error: bool = False
    run_as: RunAs | None = None
    """None: the agent's own user (root on a normal install)."""


@dataclass(frozen=True)
class Verification:
    settle: float = 2.0
    """Wait this long after the last step before re-checking."""
    timeout: float = 30.0
    """Keep re-checking until the problem clears or this much time passed."""
    interval: float = 1.0


# ---- guardrails ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    max_runs: int
    window: float


@dataclass(frozen=True)
class Window:
    """A maintenance window: weekly (``days`` + ``start``/``end`` as HH:MM, UTC) or absolute."""

    days: frozenset[int] = frozenset(range(7))
    start_minute: int | None = None
    end_minute: int | None = None
    start_at: float | None = None
    end_at: float | None = None
    name: str = ""


@dataclass(frozen=True)
class Guardrails:
    cooldown: float = 300.0
    budget: Budget = Budget(max_runs=3, window=3600.0)
    breaker_after: int = 3
    """Open the circuit after this many remediations in a row that did not fix the problem."""
    approval_ttl: float = 3600.0
    maintenance: tuple[Window, ...] = ()


@dataclass(frozen=True)
class Escalation:
    sinks: tuple[str, ...] = ()
    repeat: float = 3600.0
    """Re-notify about the same ongoing reason at most this often."""


# ---- checks and the policy -----------------------------------------------------------------


@dataclass(frozen=True)
class CheckSpec:
    name: str
    type: str
    config: Any
    interval: float = 10.0
    timeout: float = 10.0
    warning: Threshold | None = None
    critical: Threshold | None = None


@dataclass(frozen=True)
class Policy:
    name: str
    source: str
    """File the policy came from (for errors and ``explain``)."""
    checks: tuple[CheckSpec, ...]
    rule: Rule
    steps: tuple[Step, ...]
    labels: tuple[tuple[str, str], ...] = ()
    selector: tuple[tuple[str, str], ...] = ()
    severity: Severity = Severity.WARNING
    description: str = ""
    runbook: str = ""
    manual_minutes: float = 0.0
    mode: Mode = Mode.AUTO
    verification: Verification = Verification()
    guardrails: Guardrails = Guardrails()
    escalation: Escalation = Escalation()

    def check(self, name: str) -> CheckSpec:
        for spec in self.checks:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def selects(self, host_labels: dict[str, str]) -> bool:
        return all(host_labels.get(k) == v for k, v in self.selector)
