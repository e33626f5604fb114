"""Rollout health gates: what "this wave is healthy" means, as numbers. Pure, no I/O.

Every gate has a default, so a rollout is protected even when the operator names none, and each
can be overridden (``--gate agents_lost=2``) or put in ``observe`` mode (``--gate-mode
escalations=observe``): evaluated and shown in ``rollout status``, never halting. That is how an
operator tunes a new gate on real traffic before trusting it to stop a release.

Count gates take an absolute number (``2``) or a share of the hosts updated so far (``1%``): a
canary of one host tolerates nothing, a wave of a thousand tolerates a few unrelated losses. The
rate gate takes a fraction (``0.2``) or a percent (``20%``). A gate fails when its value is above
its limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from controlplane.errors import InvalidRequest


class GateMode(StrEnum):
    ENFORCE = "enforce"
    OBSERVE = "observe"


@dataclass(frozen=True)
class GateDef:
    name: str
    default: str
    rate: bool
    help: str


GATES: dict[str, GateDef] = {
    g.name: g
    for g in (
        GateDef(
            "failed_applies",
            "0",
            False,
            "hosts that rejected the bundle, or did not apply it within the apply timeout",
        ),
        GateDef("agents_lost", "1%", False, "updated hosts with no heartbeat for too long"),
        GateDef(
            "failure_rate",
            "20%",
            True,
            "share of remediations on updated hosts that failed or did not verify",
        ),
        GateDef("escalations", "1%", False, "escalations raised by updated hosts"),
    )
}


@dataclass(frozen=True)
class GateSetting:
    name: str
    threshold: str
    mode: GateMode
    value: float
    percent: bool


@dataclass(frozen=True)
class Observations:
    """What the updated hosts did since they took the new bundle."""

    updated: int = 0
    failed_applies: int = 0
    """Rejected, failed, or not applied within the apply timeout."""
    pending: int = 0
    """Assigned and still within the apply timeout: the wave cannot pass yet."""
    lost: int = 0
    executions: int = 0
    bad_executions: int = 0
    escalations: int = 0
    details: Mapping[str, str] = field(default_factory=dict)
    """Gate name -> which hosts or what, for the operator."""


@dataclass(frozen=True)
class GateResult:
    name: str
    mode: str
    threshold: str
    limit: float
    value: float
    passed: bool
    detail: str = ""

    @property
    def halts(self) -> bool:
        return not self.passed and self.mode == GateMode.ENFORCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        shown = f"{self.value:.0%}" if GATES[self.name].rate else f"{self.value:g}"
        limit = f"{self.limit:.0%}" if GATES[self.name].rate else f"{self.limit:g}"
        text = f"gate {self.name}: {shown} > {limit} (threshold {self.threshold})"
        return f"{text}: {self.detail}" if self.detail else text


def parse_gates(thresholds: Mapping[str, str], modes: Mapping[str, str]) -> dict[str, GateSetting]:
    """Every gate with its threshold and mode; unknown names and bad values fail together."""
    problems = []
    known = ", ".join(GATES)
    for name in sorted(set(thresholds) | set(modes)):
        if name not in GATES:
            problems.append(f"unknown gate {name!r} (known: {known})")
    settings: dict[str, GateSetting] = {}
    for name, gate in GATES.items():
        text = str(thresholds.get(name, gate.default)).strip()
        mode_text = modes.get(name, GateMode.ENFORCE)
        try:
            mode = GateMode(mode_text)
        except ValueError:
            problems.append(f"--gate-mode {name}={mode_text}: use enforce or observe")
            continue
        number, percent = _number(text)
        if number is None or number < 0 or (percent and number > 100):
            problems.append(f"--gate {name}={text}: expected a number or a percent, e.g. 2 or 1%")
            continue
        if gate.rate and not percent and number > 1:
            problems.append(f"--gate {name}={text}: a rate is 0..1 or a percent (20%)")
            continue
        settings[name] = GateSetting(name, text, mode, number, percent)
    if problems:
        raise InvalidRequest("; ".join(problems))
    return settings


def _number(text: str) -> tuple[float | None, bool]:
    percent = text.endswith("%")
    try:
        return float(text.rstrip("%")), percent
    except ValueError:
        return None, percent


def evaluate(settings: Mapping[str, GateSetting], obs: Observations) -> list[GateResult]:
    values = {
        "failed_applies": float(obs.failed_applies),
        "agents_lost": float(obs.lost),
        "failure_rate": obs.bad_executions / obs.executions if obs.executions else 0.0,
        "escalations": float(obs.escalations),
    }
    results = []
    for name, setting in settings.items():
        if GATES[name].rate:
            limit = setting.value / 100 if setting.percent else setting.value
        else:
            limit = setting.value * obs.updated / 100 if setting.percent else setting.value
        value = values[name]
        results.append(
            GateResult(
                name,
                str(setting.mode),
                setting.threshold,
                limit,
                value,
                value <= limit + 1e-12,
                obs.details.get(name, ""),
            )
        )
    return results
