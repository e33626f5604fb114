"""The agent's main loop: schedule checks, evaluate rules, apply guardrails, remediate, verify.

Threads and who owns what:
- the **main loop** (the thread that calls ``run``) owns all policy state. It schedules samples
  (``agent.check_cycle``), receives results through one event queue, evaluates rules, calls the
  pure ``decide()`` (``agent.decisions``), writes decisions and intents, and starts remediations
  (``agent.executions``). Nothing else mutates policy state.
- a **check pool** runs samples. A check that overruns its timeout is reported UNKNOWN and not
  sampled again until it returns; the others keep their schedule.
- a **remediation pool** (host-wide ``max_concurrency`` workers) runs steps and verification, then
  posts the outcome back to the main loop.
- the **pid watcher** posts process deaths, so a watched process is re-checked in milliseconds.
- the **notifier** delivers escalations from the durable queue.
- the **fleet client** (only with ``control_plane`` configured) streams the journal's outbox to
  the control plane and applies its assignments and pauses. It shares nothing mutable with the
  loop: the loop publishes a ``LiveState`` snapshot, and nothing here ever waits on the network.

Crash safety: the intent row is committed (fsync) before the first command; a row found
``running`` at start-up is marked ``interrupted``, counted, escalated, and never re-run
(``agent.executions``). A journal that cannot be written puts the loop in degraded mode
(``agent.degraded``).
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.check_cycle import MAX_WAIT, CheckCycle
from agent.checks.base import CheckEnv, CheckResult
from agent.checks.proctable import ProcessTable
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig
from agent.decisions import Decider
from agent.degraded import DegradedMode
from agent.engine.decide import Facts
from agent.escalate import Escalator
from agent.executions import Executions
from agent.instrumentation import (
    AgentSnapshot,
    Instruments,
    NoMetrics,
    open_metrics,
    snapshot_agent,
)
from agent.journal import Journal
from agent.logs import log_event
from agent.pauses import PauseFile
from agent.policy.model import Policy
from agent.policyset import LivePolicy, live_policy, load_policies, pointer_stamp, policy_dir
from agent.remediate import CommandRunner, SubprocessRunner
from agent.sdnotify import SystemdNotifier, Watchdog
from agent.sqlite_db import file_error, is_transient
from agent.status import StatusWriter

if TYPE_CHECKING:  # imported for real only when a control plane is configured (grpcio)
    from agent.fleet.client import FleetClient
    from agent.fleet.health import LiveState
    from agent.fleet.outbox import Outbox

SOURCE_POLL = 2.0


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        clock: Clock | None = None,
        runner: CommandRunner | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.runner = runner or SubprocessRunner(redactor=config.redactor)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.journal = journal or Journal(config.journal_path)
        self.pauses = PauseFile(config.pause_path)
        self.processes = ProcessTable()
        self.env = CheckEnv(root=config.root, processes=self.processes)
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.policies: dict[str, LivePolicy] = {}
        self.load_errors: list[str] = []
        self._by_source: dict[str, list[Policy]] = {}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.cycle = CheckCycle(config, self.clock, self.processes, self.events)
        self.escalator = Escalator(config, self.journal, self.clock)
        self.executions = Executions(
            config,
            self.clock,
            self.journal,
            self.escalator,
            self.runner,
            self.processes,
            self._stop,
            self.events,
        )
        self.decider = Decider(
            config,
            self.clock,
            self.journal,
            self.pauses,
            self.escalator,
            self.executions,
            self.policies,
        )
        self.status = StatusWriter(self.journal, self.clock)
        self._next_housekeeping = 0.0
        self._next_prune = 0.0
        self._source_stamp: int | None = None
        self.fleet: FleetClient | None = None
        self.outbox: Outbox | None = None
        self.systemd = SystemdNotifier.from_environ()
        self.watchdog = Watchdog.from_environ(self.systemd, clock=self.clock)
        self.metrics: Instruments = NoMetrics()
        self.degraded = DegradedMode(
            self.journal, self.clock, self.systemd, self._stop, self._summary
        )
        if config.control_plane is not None:
            from agent.fleet.outbox import Outbox

            # Before crash recovery in start(), so interrupted executions are reported too.
            self.outbox = Outbox(self.journal, config.control_plane.outbox_limit, self.clock)
            self.journal.reporter = self.outbox

    @property
    def storm(self) -> bool:
        """True while the storm guard holds automation (too many policies firing at once)."""
        return self.decider.storm

    @property
    def unwritable_since(self) -> float | None:
        """Wall time the journal stopped taking writes (disk full, locked); None when fine."""
        return self.degraded.since

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Recover from a crash, load policies, start helpers. Called by ``run``."""
        self.metrics = open_metrics(self.config.metrics, self._snapshot, self.watchdog)
        self.escalator.notifier.observer = self.metrics.observe_notification
        self.executions.recover(self.metrics)
        self._source_stamp = pointer_stamp(self.config)
        self.reload()
        self.escalator.start()
        self.status.agent_started(self.config, os.getpid())
        if self.outbox is not None:
            self._start_fleet(self.outbox)
        self.systemd.ready(self._summary())

    def _summary(self) -> str:
        """One line for ``systemctl status``."""
        firing = sum(1 for lp in self.policies.values() if lp.firing)
        return (
            f"{len(self.policies)} policies, {firing} firing, {len(self.load_errors)} load errors"
        )

    def _snapshot(self) -> AgentSnapshot:
        """Live state for the metrics endpoint (runs on its thread; reads only)."""
        fleet = self.fleet
        channel = fleet.snapshot if fleet is not None else None
        return snapshot_agent(self, channel, self.journal.notification_counts)

    def _start_fleet(self, outbox: Outbox) -> None:
        """Connect to the control plane in the background. Imported here rather than at the
        top: an agent without a control plane never loads grpcio (memory on every host)."""
        from agent.fleet.client import FleetClient

        self.fleet = FleetClient(self.config, self.journal, outbox, self.clock)
        self.fleet.observe(self.live_state())
        self.fleet.start()

    def live_state(self) -> LiveState:
        """An immutable snapshot of what the heartbeat reports (taken on the main loop)."""
        from agent.fleet.health import LiveState

        firing = tuple(sorted(n for n, lp in self.policies.items() if lp.firing))
        return LiveState(tuple(sorted(self.policies)), firing, self.storm)

    def request_stop(self) -> None:
        self._stop.set()
        self.events.put(("wake",))

    def request_reload(self) -> None:
        self._reload.set()
        self.events.put(("wake",))

    def run(self, drain_timeout: float = 30.0) -> None:
        """Start, then turn the loop until asked to stop. A journal that fails for good (corrupt
        pages found mid-run; full or locked before start-up finished) ends the process with
        :class:`DatabaseFileError`: the file and the remedy, no traceback."""
        try:
            self._run(drain_timeout)
        except sqlite3.DatabaseError as exc:
            raise file_error(self.journal.path, exc) from None

    def _run(self, drain_timeout: float) -> None:
        self.start()
        try:
            while not self._stop.is_set():
                try:
                    if self.degraded.since is None or self._journal_writable():
                        self._turn()
                except sqlite3.OperationalError as exc:
                    if not is_transient(exc):
                        raise
                    self.degraded.unwritable(exc)
                self.watchdog.beat()  # systemd watchdog and /healthz: the loop turned
        finally:
            self.shutdown(drain_timeout)

    def _turn(self) -> None:
        if self._reload.is_set():
            self._reload.clear()
            self.systemd.reloading()
            self.reload()
            self.systemd.ready(self._summary())
        timeout = self.cycle.schedule(self.policies, self._on_result)
        self._drain_events(timeout)
        self.status.tick(self)
        self._housekeeping()

    def _journal_writable(self) -> bool:
        """Probe the journal (``agent.degraded``); on success sample every check again at once
        (results seen while degraded were dropped)."""
        self.degraded.probe()
        now = self.clock.monotonic()
        for lp in self.policies.values():
            for live in lp.checks.values():
                live.next_due = min(live.next_due, now)
        return True

    def _housekeeping(self) -> None:
        """Every few seconds: notice a newly activated bundle (reload); every
        ``housekeeping_interval``: prune the journal so it stays bounded."""
        mono = self.clock.monotonic()
        if mono < self._next_housekeeping:
            return
        self._next_housekeeping = mono + SOURCE_POLL
        if self.fleet is not None:
            self.fleet.observe(self.live_state())
        if self.config.policy_source == "bundle":
            stamp = pointer_stamp(self.config)
            if stamp != self._source_stamp:
                self._source_stamp = stamp
                log_event("bundle_changed", state_dir=str(self.config.state_dir))
                self.reload()
        if mono >= self._next_prune:
            self._next_prune = mono + self.config.housekeeping_interval
            self.journal.prune(self.clock.now())

    def shutdown(self, drain_timeout: float) -> None:
        """Stop sampling; let running remediations finish (bounded), then close everything.
        A remediation still running at the deadline stays ``running`` in the journal and is
        marked ``interrupted`` at the next start, never re-run."""
        self.systemd.stopping()
        log_event("agent_stopping", running=[p for p, lp in self.policies.items() if lp.running])
        self.cycle.pool.close()
        deadline = self.clock.monotonic() + drain_timeout
        while any(lp.running for lp in self.policies.values()):
            left = deadline - self.clock.monotonic()
            if left <= 0:
                break
            self._drain_events(min(left, MAX_WAIT), only_remediations=True)
        self.executions.close()
        self.cycle.watcher.close()
        self.escalator.stop()
        if self.fleet is not None:
            self.fleet.stop()  # unsent reports stay in the outbox for the next start
        try:
            self.status.agent_stopped()
        except sqlite3.OperationalError as exc:
            if not is_transient(exc):
                raise
            log_event(
                "journal_unwritable", logging.ERROR, path=str(self.journal.path), error=str(exc)
            )
        self.metrics.close()
        log_event("agent_stopped")

    # ---- policies ----------------------------------------------------------------------------

    def reload(self) -> None:
        """(Re)load policies. A file that fails validation keeps its last good version running;
        a policy whose document did not change keeps its runtime state (memory, schedule)."""
        result, self._by_source, wanted = load_policies(
            self.config, self.policy_dir(), self._by_source
        )
        self.load_errors = [str(e) for e in result.errors]
        for name in list(self.policies):
            if name not in wanted or wanted[name] != self.policies[name].policy:
                self._drop(name)
        now = self.clock.monotonic()
        for name, policy in wanted.items():
            if name not in self.policies:
                self.policies[name] = live_policy(policy, self.env, now)
        self.journal.drop_policy_states(list(self.policies))
        self.status.force()
        log_event("policies_loaded", policies=sorted(self.policies), errors=len(result.errors))

    def policy_dir(self) -> Path:
        """Where policies come from: the configured directory, or the active signed bundle."""
        return policy_dir(self.config)

    def _drop(self, name: str) -> None:
        self.cycle.forget(name, self.policies.pop(name))

    # ---- events and decisions ------------------------------------------------------------------

    def _drain_events(self, timeout: float, only_remediations: bool = False) -> None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(event, only_remediations)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    def _handle(self, event: tuple[Any, ...], only_remediations: bool) -> None:
        kind = event[0]
        if kind == "done":
            result = event[1]
            self.executions.finished(self.policies.get(result.policy), result, self.metrics)
        elif only_remediations:
            return
        elif kind == "result":
            lp = self.policies.get(event[1])
            live = lp.checks.get(event[2]) if lp else None
            if lp is None or live is None:
                return
            self.cycle.returned(live)
            self._on_result(lp, event[3])
        elif kind == "pid_exit":
            self.cycle.pid_exited(event[1], self.policies)

    def _on_result(self, lp: LivePolicy, result: CheckResult) -> None:
        self.decider.on_result(lp, result, self.metrics)

    def facts(self, lp: LivePolicy) -> Facts:
        """Everything ``decide()`` needs about this policy and the host (``agent.decisions``)."""
        return self.decider.facts(lp)
