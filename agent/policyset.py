"""The running set of policies: where they come from, what a reload keeps, and their live state.

A reload reads the whole policy directory (``agent.policy.loader.load_dir``). A file that fails
validation keeps its last good version running; a policy whose document did not change keeps
its runtime state (rule memory, schedule), because the runner only replaces the ``LivePolicy``
of a policy that is new or changed.

Policies come from the configured directory or, with ``policy_source: bundle``, from the active
signed bundle; the runner notices a newly activated bundle by the pointer file's mtime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from agent.checks.base import CheckEnv, CheckResult
from agent.config import AgentConfig
from agent.engine.decide import Decision
from agent.engine.rules import RuleMemory
from agent.logs import log_event
from agent.policy.loader import LoadResult, load_dir
from agent.policy.model import Policy
from agent.sampling import LiveCheck, build_check


@dataclass
class LivePolicy:
    policy: Policy
    checks: dict[str, LiveCheck]
    results: dict[str, CheckResult] = field(default_factory=dict)
    memory: RuleMemory = field(default_factory=dict)
    firing: bool = False
    running: str | None = None
    """Execution id of the remediation in progress."""
    last: Decision | None = None


def live_policy(policy: Policy, env: CheckEnv, now: float) -> LivePolicy:
    """A newly loaded policy, every check due at ``now`` (monotonic)."""
    checks = {s.name: build_check(policy.name, s, env) for s in policy.checks}
    for live in checks.values():
        live.next_due = now
    return LivePolicy(policy, checks)


def load_policies(
    config: AgentConfig, directory: Path, last_good: dict[str, list[Policy]]
) -> tuple[LoadResult, dict[str, list[Policy]], dict[str, Policy]]:
    """Load ``directory`` and log every rejection. Returns the load result, the policies by
    source file (a failed file keeps its entry from ``last_good``), and the policies this host
    runs by name (those whose selector matches the host's labels)."""
    result = load_dir(directory, host_accounts=True)
    for error in result.errors:
        log_event(
            "policy_rejected",
            logging.ERROR,
            file=error.file,
            path=error.path,
            problem=error.problem,
        )
    by_source: dict[str, list[Policy]] = {}
    for policy in result.policies:
        by_source.setdefault(policy.source, []).append(policy)
    for source in result.failed_files:
        if source in last_good:
            by_source[source] = last_good[source]
            log_event("policy_kept_last_good", logging.WARNING, file=source)
    wanted = {p.name: p for ps in by_source.values() for p in ps if p.selects(config.labels)}
    return result, by_source, wanted


def policy_dir(config: AgentConfig) -> Path:
    """Where policies come from: the configured directory, or the active signed bundle."""
    if config.policy_source != "bundle":
        return config.policies_dir
    from agent.bundle.pointer import PointerCorrupt, active_policy_dir

    try:
        directory = active_policy_dir(config.state_dir)
    except PointerCorrupt as exc:
        log_event("bundle_pointer_corrupt", logging.ERROR, error=str(exc))
        directory = None
    if directory is None:
        log_event(
            "no_active_bundle",
            logging.WARNING,
            state_dir=str(config.state_dir),
            hint="install one with `stanch-agent bundle install FILE --trust DIR`",
        )
        return config.state_dir / "bundles" / "none"
    return directory


def pointer_stamp(config: AgentConfig) -> int | None:
    """The active-bundle pointer's mtime (ns): a change means a newly activated bundle."""
    try:
        return (config.state_dir / "bundles" / "active.json").stat().st_mtime_ns
    except FileNotFoundError:
        return None
