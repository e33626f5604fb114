"""The boundary around every check: one place that turns a sample into a CheckResult.

Whatever a check does (raise, return garbage, overrun its timeout), the caller gets a result with a
status, the duration and an error message. The status comes from the plugin itself (Nagios
contract), else from the policy's ``critical``/``warning`` thresholds, else the type's default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent.checks import CHECK_TYPES
from agent.checks.base import Check, CheckEnv, CheckResult, Status
from agent.engine.rules import threshold_status
from agent.policy.model import CheckSpec


@dataclass
class LiveCheck:
    """A check of a loaded policy, with its schedule."""

    policy: str
    spec: CheckSpec
    check: Check
    next_due: float = 0.0
    inflight_since: float | None = None
    pids: set[int] = field(default_factory=set)

    @property
    def key(self) -> tuple[str, str]:
        return (self.policy, self.spec.name)


def build_check(policy: str, spec: CheckSpec, env: CheckEnv) -> LiveCheck:
    check = CHECK_TYPES[spec.type].build(spec.config, env)
    return LiveCheck(policy, spec, check)


def sample(live: LiveCheck, wall: float) -> CheckResult:
    """Run one sample inside the boundary. Never raises (except KeyboardInterrupt/SystemExit)."""
    spec = live.spec
    started = time.monotonic()
    try:
        raw = live.check.sample()
    except Exception as exc:  # the boundary: any failure of one check is that check's UNKNOWN
        return CheckResult(
            spec.name, Status.UNKNOWN, {}, "", _describe(exc), time.monotonic() - started, wall
        )
    duration = time.monotonic() - started
    if raw.status is not None:
        status = raw.status
    else:
        ctype = CHECK_TYPES[spec.type]
        critical = spec.critical or ctype.default_critical
        status = threshold_status(raw.metrics, spec.warning, critical)
    return CheckResult(spec.name, status, dict(raw.metrics), raw.summary, None, duration, wall)


def timed_out(live: LiveCheck, wall: float, elapsed: float) -> CheckResult:
    return CheckResult(
        live.spec.name,
        Status.UNKNOWN,
        {},
        "",
        f"check did not finish within its {live.spec.timeout:g}s timeout "
        f"(running for {elapsed:.1f}s)",
        elapsed,
        wall,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text if len(text) < 500 else text[:500] + "..."
