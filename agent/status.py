"""The live status snapshot that ``stanch-agent status`` reads from the journal.

Written from the main loop: a policy's row when its state changes (firing, check statuses, last
decision), everything at least every ``REFRESH`` seconds, and an agent heartbeat, so the CLI can
tell a live agent from a dead one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from agent.clock import Clock
from agent.journal import Journal

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.runner import Agent

REFRESH = 10.0
TICK = 0.5
"""Compare live state with what was written at most this often (the loop wakes per result)."""


class StatusWriter:
    def __init__(self, journal: Journal, clock: Clock) -> None:
        self.journal = journal
        self.clock = clock
        self._written: dict[str, Any] = {}
        self._last_full = 0.0
        self._last_tick = float("-inf")

    def agent_started(self, config: AgentConfig, pid: int) -> None:
        self.journal.put_agent_state(
            {
                "pid": pid,
                "host": config.host_id,
                "labels": config.labels,
                "started_at": self.clock.now(),
                "heartbeat_at": self.clock.now(),
                "policies_dir": str(config.policies_dir),
                "stopped_at": None,
            }
        )

    def agent_stopped(self) -> None:
        self.journal.put_agent_state({"stopped_at": self.clock.now()})

    def force(self) -> None:
        """Write everything at the next tick (after a reload: new load errors show at once)."""
        self._last_full = float("-inf")
        self._last_tick = float("-inf")

    def tick(self, agent: Agent) -> None:
        mono = self.clock.monotonic()
        if mono - self._last_tick < TICK:
            return
        self._last_tick = mono
        full = mono - self._last_full >= REFRESH
        for name, lp in agent.policies.items():
            state = {
                "firing": lp.firing,
                "running": lp.running,
                "mode": lp.policy.mode.value,
                "severity": lp.policy.severity.value,
                "source": lp.policy.source,
                "runbook": lp.policy.runbook,
                "checks": {
                    c: {"status": r.status.label, "summary": r.summary, "error": r.error}
                    for c, r in sorted(lp.results.items())
                },
                "last": lp.last.message if lp.last else "",
            }
            if full or self._written.get(name) != state:
                self._written[name] = state
                self.journal.put_policy_state(name, self.clock.now(), state)
        if full:
            self._last_full = mono
            self.journal.put_agent_state(
                {
                    "heartbeat_at": self.clock.now(),
                    "pid": os.getpid(),
                    "storm": agent.storm,
                    "load_errors": agent.load_errors,
                    "policies": sorted(agent.policies),
                }
            )
