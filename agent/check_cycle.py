"""The check cycle: submit due samples to the check pool, notice overdue checks, follow pids.

Lifecycle: the runner's main loop calls ``schedule`` once a turn and hands each ``result`` and
``pid_exit`` event back here before evaluating it. Everything in this module runs on the main
loop except the sample jobs, which run on the check pool and only post their result to the
event queue.

- A check that overruns its timeout is reported UNKNOWN (``timed_out``) and not sampled again
  until it returns; the others keep their schedule. The pool is told how many workers are stuck
  so it can grow past them.
- The pids a check watches (a process check's ``watched_pids``) go to the pid watcher, which
  posts ``pid_exit`` when one dies, so a watched process is re-checked in milliseconds.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from typing import Any

from agent.checks.base import CheckResult
from agent.checks.proctable import ProcessTable
from agent.clock import Clock
from agent.config import AgentConfig
from agent.logs import log_event
from agent.pidwatch import PidWatcher
from agent.policyset import LivePolicy
from agent.sampling import LiveCheck, sample, timed_out
from agent.workers import WorkerPool

MAX_WAIT = 1.0


class CheckCycle:
    def __init__(
        self,
        config: AgentConfig,
        clock: Clock,
        processes: ProcessTable,
        events: queue.Queue[tuple[Any, ...]],
    ) -> None:
        self.clock = clock
        self.processes = processes
        self.events = events
        self.pool = WorkerPool(config.check_workers, "stanch-check")
        self.watcher = PidWatcher(lambda pid: events.put(("pid_exit", pid)))
        self._overdue: set[tuple[str, str]] = set()
        self._pid_owners: dict[int, set[tuple[str, str]]] = {}

    def schedule(
        self,
        policies: dict[str, LivePolicy],
        on_result: Callable[[LivePolicy, CheckResult], None],
    ) -> float:
        """Submit due samples; return how long the loop may wait for events."""
        now = self.clock.monotonic()
        wall = self.clock.now()
        next_due = now + MAX_WAIT
        for lp in policies.values():
            for live in lp.checks.values():
                if live.inflight_since is not None:
                    elapsed = now - live.inflight_since
                    if elapsed > live.spec.timeout and live.key not in self._overdue:
                        self._overdue.add(live.key)
                        self.pool.set_stuck(len(self._overdue))
                        log_event(
                            "check_timed_out",
                            logging.WARNING,
                            policy=lp.policy.name,
                            check=live.spec.name,
                            seconds=round(elapsed, 1),
                        )
                        on_result(lp, timed_out(live, wall, elapsed))
                    continue
                if live.next_due <= now:
                    live.inflight_since = now
                    live.next_due = max(live.next_due + live.spec.interval, now)
                    self.pool.submit(self._sample_job, live)
                next_due = min(next_due, live.next_due)
        return max(0.0, next_due - now)

    def _sample_job(self, live: LiveCheck) -> None:
        result = sample(live, self.clock.now())
        self.events.put(("result", live.policy, live.spec.name, result))

    def returned(self, live: LiveCheck) -> None:
        """A sample came back: the check is no longer in flight (nor stuck), and the pids it
        watches are followed."""
        live.inflight_since = None
        if live.key in self._overdue:
            self._overdue.discard(live.key)
            self.pool.set_stuck(len(self._overdue))
        self._sync_pids(live)

    def pid_exited(self, pid: int, policies: dict[str, LivePolicy]) -> None:
        """Re-check at once every check that watched ``pid``."""
        self.processes.invalidate()  # the next process samples must not see the dead pid
        for policy, check in self._pid_owners.pop(pid, set()):
            lp = policies.get(policy)
            if lp and check in lp.checks:
                lp.checks[check].pids.discard(pid)
                lp.checks[check].next_due = self.clock.monotonic()
                log_event("watched_process_exited", policy=policy, check=check, pid=pid)

    def forget(self, name: str, lp: LivePolicy) -> None:
        """A policy was dropped: stop counting its stuck checks and watching its pids."""
        self._overdue = {key for key in self._overdue if key[0] != name}
        self.pool.set_stuck(len(self._overdue))
        for live in lp.checks.values():
            for pid in live.pids:
                self._unwatch(pid, live.key)

    def _sync_pids(self, live: LiveCheck) -> None:
        watched = getattr(live.check, "watched_pids", None)
        if watched is None:
            return
        current: set[int] = set(watched())
        for pid in current - live.pids:
            self._pid_owners.setdefault(pid, set()).add(live.key)
            self.watcher.watch(pid)
        for pid in live.pids - current:
            self._unwatch(pid, live.key)
        live.pids = current

    def _unwatch(self, pid: int, key: tuple[str, str]) -> None:
        owners = self._pid_owners.get(pid)
        if owners is None:
            return
        owners.discard(key)
        if not owners:
            del self._pid_owners[pid]
            self.watcher.unwatch(pid)
