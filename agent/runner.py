"""The agent's main loop: schedule checks, evaluate rules, apply guardrails, remediate, verify.

Threads and who owns what:
- the **main loop** (the thread that calls ``run``) owns all policy state. It schedules samples,
  receives results through one event queue, evaluates rules, calls the pure ``decide()``, writes
  decisions and intents, and starts remediations. Nothing else mutates policy state.
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
``running`` at start-up is marked ``interrupted``, counted, escalated, and never re-run.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import failpoints
from agent.checks.base import CheckEnv, CheckResult
from agent.checks.proctable import ProcessTable
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig
from agent.engine.decide import Approval, Decision, Facts, Outcome, decide
from agent.engine.rules import Evaluation, RuleMemory, evaluate
from agent.escalate import Escalator
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
from agent.pidwatch import PidWatcher
from agent.policy.loader import load_dir
from agent.policy.model import Policy
from agent.remediate import CommandRunner, SubprocessRunner
from agent.remediation import Remediation, RemediationResult
from agent.sampling import LiveCheck, build_check, sample, timed_out
from agent.sdnotify import SystemdNotifier, Watchdog
from agent.sqlite_db import file_error, is_transient
from agent.status import StatusWriter
from agent.workers import WorkerPool

if TYPE_CHECKING:  # imported for real only when a control plane is configured (grpcio)
    from agent.fleet.client import FleetClient
    from agent.fleet.health import LiveState
    from agent.fleet.outbox import Outbox

MAX_WAIT = 1.0
SOURCE_POLL = 2.0
UNWRITABLE_RETRY = 1.0
"""While the journal cannot be written, probe it this often (nothing else runs meanwhile)."""
UNWRITABLE_LOG = 30.0


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
        self._pid_owners: dict[int, set[tuple[str, str]]] = {}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._check_pool = WorkerPool(config.check_workers, "stanch-check")
        self._fix_pool = ThreadPoolExecutor(config.max_concurrency, "stanch-fix")
        self.watcher = PidWatcher(lambda pid: self.events.put(("pid_exit", pid)))
        self.escalator = Escalator(config, self.journal, self.clock)
        self.status = StatusWriter(self.journal, self.clock)
        self.storm = False
        self._overdue: set[tuple[str, str]] = set()
        self._next_housekeeping = 0.0
        self._next_prune = 0.0
        self._source_stamp: int | None = None
        self.fleet: FleetClient | None = None
        self.outbox: Outbox | None = None
        self.systemd = SystemdNotifier.from_environ()
        self.watchdog = Watchdog.from_environ(self.systemd, clock=self.clock)
        self.metrics: Instruments = NoMetrics()
        self.unwritable_since: float | None = None
        """Wall time the journal stopped taking writes (disk full, locked); None when fine."""
        self._next_unwritable_log = 0.0
        if config.control_plane is not None:
            from agent.fleet.outbox import Outbox

            # Before crash recovery in start(), so interrupted executions are reported too.
            self.outbox = Outbox(self.journal, config.control_plane.outbox_limit, self.clock)
            self.journal.reporter = self.outbox

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Recover from a crash, load policies, start helpers. Called by ``run``."""
        self.metrics = open_metrics(self.config.metrics, self._snapshot, self.watchdog)
        self.escalator.notifier.observer = self.metrics.observe_notification
        now = self.clock.now()
        for row in self.journal.running_executions():
            # Report first, then mark: a crash in between repeats the report (the decision is
            # written once per execution, the page is deduplicated) and never loses it.
            log_event(
                "execution_interrupted", logging.WARNING, policy=row.policy, correlation_id=row.id
            )
            if not self.journal.has_decision(row.id, "interrupted"):
                self.journal.record_decision(
                    row.policy,
                    now,
                    "interrupted",
                    "crash_recovery",
                    f"remediation {row.id} was interrupted by an agent stop; counted against "
                    "the budget and not re-run",
                    row.observed,
                    [],
                    execution_id=row.id,
                )
            self.escalator.escalate(
                row.policy,
                "interrupted",
                f"remediation {row.id} was interrupted; check the host",
                policy=None,
                execution_id=row.id,
            )
            failpoints.hit("crash_after_recover_report")
            self.journal.mark_interrupted(row.id, now)
            self.metrics.observe_remediation(row.policy, "interrupted", None)
        self._source_stamp = self._pointer_stamp()
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
                    if self.unwritable_since is None or self._journal_writable():
                        self._turn()
                except sqlite3.OperationalError as exc:
                    if not is_transient(exc):
                        raise
                    self._journal_unwritable(exc)
                self.watchdog.beat()  # systemd watchdog and /healthz: the loop turned
        finally:
            self.shutdown(drain_timeout)

    def _turn(self) -> None:
        if self._reload.is_set():
            self._reload.clear()
            self.systemd.reloading()
            self.reload()
            self.systemd.ready(self._summary())
        timeout = self._schedule()
        self._drain_events(timeout)
        self.status.tick(self)
        self._housekeeping()

    def _journal_unwritable(self, exc: sqlite3.OperationalError) -> None:
        """Degraded mode: a journal write failed because the disk under the state dir is full
        or another process holds the file's lock. No remediation may start (its intent could
        not be recorded first), so the loop stops evaluating and probes the journal every
        ``UNWRITABLE_RETRY`` seconds; a clear error goes to the log and to systemd's status
        line. The process stays up: a restart would not free the disk, and a crash loop would
        hide the cause. The first write that succeeds ends it (``_journal_writable``)."""
        if self.unwritable_since is None:
            self.unwritable_since = self.clock.now()
            self._next_unwritable_log = 0.0
        mono = self.clock.monotonic()
        if mono >= self._next_unwritable_log:
            self._next_unwritable_log = mono + UNWRITABLE_LOG
            problem = file_error(self.journal.path, exc)
            log_event(
                "journal_unwritable",
                logging.ERROR,
                path=str(self.journal.path),
                error=problem.problem,
                hint=f"{problem.hint}; no remediation starts until its intent can be recorded",
                since=self.unwritable_since,
            )
            self.systemd.status(f"DEGRADED: cannot write {self.journal.path}: {exc}")
        self._stop.wait(UNWRITABLE_RETRY)

    def _journal_writable(self) -> bool:
        """Probe with the agent heartbeat; on success leave degraded mode, say so, and sample
        every check again at once (results seen while degraded were dropped)."""
        self.journal.put_agent_state({"heartbeat_at": self.clock.now()})
        since = self.unwritable_since or self.clock.now()
        self.unwritable_since = None
        log_event("journal_writable", path=str(self.journal.path), after=self.clock.now() - since)
        self.systemd.status(self._summary())
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
            stamp = self._pointer_stamp()
            if stamp != self._source_stamp:
                self._source_stamp = stamp
                log_event("bundle_changed", state_dir=str(self.config.state_dir))
                self.reload()
        if mono >= self._next_prune:
            self._next_prune = mono + self.config.housekeeping_interval
            self.journal.prune(self.clock.now())

    def _pointer_stamp(self) -> int | None:
        try:
            return (self.config.state_dir / "bundles" / "active.json").stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def shutdown(self, drain_timeout: float) -> None:
        """Stop sampling; let running remediations finish (bounded), then close everything.
        A remediation still running at the deadline stays ``running`` in the journal and is
        marked ``interrupted`` at the next start, never re-run."""
        self.systemd.stopping()
        log_event("agent_stopping", running=[p for p, lp in self.policies.items() if lp.running])
        self._check_pool.close()
        deadline = self.clock.monotonic() + drain_timeout
        while any(lp.running for lp in self.policies.values()):
            left = deadline - self.clock.monotonic()
            if left <= 0:
                break
            self._drain_events(min(left, MAX_WAIT), only_remediations=True)
        self._fix_pool.shutdown(wait=False, cancel_futures=True)
        self.watcher.close()
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
        result = load_dir(self.policy_dir(), host_accounts=True)
        self.load_errors = [str(e) for e in result.errors]
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
            if source in self._by_source:
                by_source[source] = self._by_source[source]
                log_event("policy_kept_last_good", logging.WARNING, file=source)
        self._by_source = by_source
        wanted = {
            p.name: p for ps in by_source.values() for p in ps if p.selects(self.config.labels)
        }
        for name in list(self.policies):
            if name not in wanted or wanted[name] != self.policies[name].policy:
                self._drop(name)
        now = self.clock.monotonic()
        for name, policy in wanted.items():
            if name not in self.policies:
                checks = {s.name: build_check(name, s, self.env) for s in policy.checks}
                for live in checks.values():
                    live.next_due = now
                self.policies[name] = LivePolicy(policy, checks)
        self.journal.drop_policy_states(list(self.policies))
        self.status.force()
        log_event("policies_loaded", policies=sorted(self.policies), errors=len(result.errors))

    def policy_dir(self) -> Path:
        """Where policies come from: the configured directory, or the active signed bundle."""
        if self.config.policy_source != "bundle":
            return self.config.policies_dir
        from agent.bundle.pointer import PointerCorrupt, active_policy_dir

        try:
            directory = active_policy_dir(self.config.state_dir)
        except PointerCorrupt as exc:
            log_event("bundle_pointer_corrupt", logging.ERROR, error=str(exc))
            directory = None
        if directory is None:
            log_event(
                "no_active_bundle",
                logging.WARNING,
                state_dir=str(self.config.state_dir),
                hint="install one with `stanch-agent bundle install FILE --trust DIR`",
            )
            return self.config.state_dir / "bundles" / "none"
        return directory

    def _drop(self, name: str) -> None:
        lp = self.policies.pop(name)
        self._overdue = {key for key in self._overdue if key[0] != name}
        self._check_pool.set_stuck(len(self._overdue))
        for live in lp.checks.values():
            for pid in live.pids:
                self._unwatch(pid, live.key)

    # ---- scheduling and events -----------------------------------------------------------------

    def _schedule(self) -> float:
        """Submit due samples; return how long the loop may wait for events."""
        now = self.clock.monotonic()
        wall = self.clock.now()
        next_due = now + MAX_WAIT
        for lp in self.policies.values():
            for live in lp.checks.values():
                if live.inflight_since is not None:
                    elapsed = now - live.inflight_since
                    if elapsed > live.spec.timeout and live.key not in self._overdue:
                        self._overdue.add(live.key)
                        self._check_pool.set_stuck(len(self._overdue))
                        log_event(
                            "check_timed_out",
                            logging.WARNING,
                            policy=lp.policy.name,
                            check=live.spec.name,
                            seconds=round(elapsed, 1),
                        )
                        self._on_result(lp, timed_out(live, wall, elapsed))
                    continue
                if live.next_due <= now:
                    live.inflight_since = now
                    live.next_due = max(live.next_due + live.spec.interval, now)
                    self._check_pool.submit(self._sample_job, live)
                next_due = min(next_due, live.next_due)
        return max(0.0, next_due - now)

    def _sample_job(self, live: LiveCheck) -> None:
        result = sample(live, self.clock.now())
        self.events.put(("result", live.policy, live.spec.name, result))

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
            self._on_remediation_done(event[1])
        elif only_remediations:
            return
        elif kind == "result":
            lp = self.policies.get(event[1])
            live = lp.checks.get(event[2]) if lp else None
            if lp is None or live is None:
                return
            live.inflight_since = None
            if live.key in self._overdue:
                self._overdue.discard(live.key)
                self._check_pool.set_stuck(len(self._overdue))
            self._sync_pids(live)
            self._on_result(lp, event[3])
        elif kind == "pid_exit":
            self.processes.invalidate()  # the next process samples must not see the dead pid
            for policy, check in self._pid_owners.pop(event[1], set()):
                lp = self.policies.get(policy)
                if lp and check in lp.checks:
                    lp.checks[check].pids.discard(event[1])
                    lp.checks[check].next_due = self.clock.monotonic()
                    log_event("watched_process_exited", policy=policy, check=check, pid=event[1])

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

    # ---- decisions ---------------------------------------------------------------------------

    def _on_result(self, lp: LivePolicy, result: CheckResult) -> None:
        self.metrics.observe_check(lp.policy.name, result.check, result)
        lp.results[result.check] = result
        if len(lp.results) < len(lp.checks):
            return  # context must be known before deciding: wait for every check once
        ev = evaluate(lp.policy.rule, lp.results, lp.memory, self.clock.monotonic())
        was_firing, lp.firing = lp.firing, ev.firing
        self._update_storm()
        if not ev.firing:
            if was_firing:
                self._cleared(lp, ev)
            return
        if lp.running:
            return  # the remediation's own verification decides; its result is recorded
        decision = decide(lp.policy, ev, self.facts(lp))
        self._apply(lp, ev, decision)

    def _update_storm(self) -> None:
        firing = sum(1 for lp in self.policies.values() if lp.firing)
        storm = self.config.storm.tripped(firing, len(self.policies))
        if storm != self.storm:
            self.storm = storm
            log_event(
                "storm_guard",
                logging.WARNING if storm else logging.INFO,
                active=storm,
                firing=firing,
                policies=len(self.policies),
            )
            if storm:
                self.escalator.escalate("*", "storm", self._storm_detail(), policy=None)

    def _storm_detail(self) -> str:
        firing = sorted(n for n, lp in self.policies.items() if lp.firing)
        return (
            f"{len(firing)} of {len(self.policies)} policies firing at once ({', '.join(firing)})"
        )

    def facts(self, lp: LivePolicy) -> Facts:
        """Everything ``decide()`` needs about this policy and the host, from the journal,
        the pause file and the live state."""
        name = lp.policy.name
        g = lp.policy.guardrails
        now = self.clock.now()
        pause = self.pauses.effective(name, now)
        failures, opened = self.journal.breaker(name)
        row = self.journal.latest_approval(name)
        approval = None
        if row is not None:
            approval = Approval(row["id"], row["status"], row["expires_at"], row["decided_by"])
        return Facts(
            now=now,
            attempts=self.journal.attempts_since(name, now - max(g.budget.window, g.cooldown)),
            in_progress=lp.running is not None,
            paused=pause is not None,
            paused_until=pause.until if pause else None,
            pause_scope=("all policies" if pause.scope == "*" else name) if pause else "",
            pause_reason=pause.reason if pause else "",
            storm=self.storm,
            storm_detail=self._storm_detail() if self.storm else "",
            breaker_failures=failures,
            breaker_open=opened is not None,
            approval=approval,
            host_running=sum(1 for p in self.policies.values() if p.running),
            host_max_concurrency=self.config.max_concurrency,
            host_runs_last_hour=self.journal.host_attempts_since(now - 3600.0),
            host_max_per_hour=self.config.max_runs_per_hour,
            host_maintenance=self.config.maintenance,
        )

    def _apply(self, lp: LivePolicy, ev: Evaluation, decision: Decision) -> None:
        name = lp.policy.name
        now = self.clock.now()
        message = decision.message
        approval_id = decision.approval_id
        if decision.reason == "approval_needed" and decision.until is not None:
            approval_id = self.journal.create_approval(name, now, decision.until, message)
            message = f"{message}; run `stanch-agent approve {approval_id}`"
        execution_id = None
        decision_id = self.journal.record_decision(
            name,
            now,
            decision.outcome.value,
            decision.reason,
            message,
            ev.observed,
            ev.why,
            decision.until,
        )
        self.metrics.observe_decision(name, decision.outcome.value, decision.reason)
        if decision.reason != (lp.last.reason if lp.last else None):
            log_event(
                "decision",
                policy=name,
                outcome=decision.outcome.value,
                reason=decision.reason,
                message=message,
            )
        lp.last = decision
        if decision.escalate:
            self.escalator.escalate(
                name,
                decision.escalate,
                message,
                policy=lp.policy,
                observed=ev.observed,
                approval_id=approval_id,
            )
        if decision.outcome is not Outcome.ACT:
            return
        execution_id = self.journal.begin_execution(
            name, now, decision_id, ev.observed, approval_id
        )
        failpoints.hit("crash_after_intent")
        lp.running = execution_id
        log_event("remediation_started", policy=name, correlation_id=execution_id)
        job = Remediation(
            lp.policy,
            execution_id,
            dict(lp.checks),
            self.runner,
            self.journal,
            self.clock,
            self.processes,
            self._stop,
            ev.observed,
            dict(lp.results),
        )
        future = self._fix_pool.submit(job.run)

        def done(f: Future[RemediationResult]) -> None:
            self.events.put(("done", _outcome(f, job)))

        future.add_done_callback(done)

    def _cleared(self, lp: LivePolicy, ev: Evaluation) -> None:
        name = lp.policy.name
        self.journal.forget_last_decision(name)
        self.journal.record_decision(
            name,
            self.clock.now(),
            "cleared",
            "condition_cleared",
            "condition no longer holds",
            ev.observed,
            ev.why,
        )
        self.journal.forget_last_decision(name)
        self.escalator.resolve(name, lp.policy, "condition no longer holds")
        self.journal.clear_escalations(name)
        lp.last = None
        log_event("condition_cleared", policy=name)

    def _on_remediation_done(self, result: RemediationResult) -> None:
        lp = self.policies.get(result.policy)
        if lp is not None and lp.running == result.execution_id:
            lp.running = None
            # Sample again at once: re-evaluate from fresh results (recording "cleared" when
            # fixed) and start watching the pids of a restarted process straight away.
            for live in lp.checks.values():
                live.next_due = self.clock.monotonic()
        name = result.policy
        now = self.clock.now()
        failures, _opened = self.journal.breaker(name)
        policy = lp.policy if lp else None
        self.journal.forget_last_decision(name)
        self.journal.record_decision(
            name,
            now,
            result.status,
            "verification",
            result.summary,
            result.observed,
            [] if result.status == "fixed" else [result.verification],
            execution_id=result.execution_id,
        )
        self.journal.forget_last_decision(name)
        log_event(
            "remediation_finished",
            policy=name,
            correlation_id=result.execution_id,
            status=result.status,
        )
        row = self.journal.execution(result.execution_id)
        self.metrics.observe_remediation(name, result.status, now - row.started_at if row else None)
        if result.status == "fixed":
            self.journal.set_breaker(name, 0, None)
            self.escalator.resolve(name, policy, result.summary, result.execution_id)
            self.journal.clear_escalations(name)
            return
        failures += 1
        after = policy.guardrails.breaker_after if policy else 3
        opened = now if failures >= after else None
        self.journal.set_breaker(name, failures, opened)
        self.escalator.escalate(
            name,
            result.status,
            result.summary,
            policy=policy,
            execution_id=result.execution_id,
            observed=result.observed,
        )
        if opened is not None:
            self.escalator.escalate(
                name,
                "breaker_open",
                f"circuit breaker opened after "
                f"{failures} remediations that did not fix the problem",
                policy=policy,
                execution_id=result.execution_id,
            )


def _outcome(future: Future[RemediationResult], job: Remediation) -> RemediationResult:
    """The job's result; a job that could not even record its failure (the journal became
    unwritable) still frees its policy: the row stays ``running`` and the next start marks it
    interrupted, never re-run."""
    exc = future.exception()
    if exc is None:
        return future.result()
    summary = f"the result could not be recorded: {exc}"
    log_event("remediation_unrecorded", logging.ERROR, policy=job.policy.name, error=str(exc))
    return RemediationResult(job.policy.name, job.execution_id, "failed", summary, "", job.observed)
