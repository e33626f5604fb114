"""``ControlPlane``: the parts wired together, and the background tasks that keep them moving.

Lifecycle: construct (nothing runs), ``start()`` (marks the agents that streamed to this replica
disconnected, since no stream survives a restart, leaving other replicas' agents alone; then
starts the report writer, the presence flusher, the rollout driver and the storm check), serve,
``stop()`` (ends every agent stream, flushes presence, marks this replica's agents disconnected,
closes storage). The gRPC servicers hold a ``ControlPlane`` and only delegate to its parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.bundle.trust import TrustStore
from agent.clock import Clock
from controlplane.assigner import Assigner
from controlplane.audit import AuditLog
from controlplane.auth import Authenticator
from controlplane.connections import Connections
from controlplane.ingest import Presence, ReportIngestor
from controlplane.instrumentation import Instruments, NoMetrics
from controlplane.killswitch import KillSwitch
from controlplane.rollout_engine import RolloutEngine
from controlplane.rollouts import Timing
from controlplane.storage.base import Report, Signer, Storage
from controlplane.storage.runner import StorageThread
from controlplane.storm import StormBreaker, StormSettings

log = logging.getLogger("stanch.cp")
NOT_FIRING = frozenset({"cleared", "quiet", ""})


@dataclass(frozen=True)
class Settings:
    lost_after: float = 60.0
    apply_timeout: float = 300.0
    storm: StormSettings = field(default_factory=StormSettings)
    tick: float = 1.0
    """How often rollouts are re-evaluated without an event (bake ends, lost agents)."""
    presence_interval: float = 5.0
    storm_interval: float = 1.0
    hello_timeout: float = 10.0
    holder: str = "local"
    """This replica's name (``--replica-id``): the rollout-driver lease's holder, and the
    ``replica`` of the agents streaming here."""
    report_retention: float = 90 * 86400.0
    """Reports older than this are deleted (hourly): the store stays bounded."""


class ControlPlane:
    def __init__(
        self,
        storage: Storage,
        trust: TrustStore,
        signer: Signer,
        clock: Clock,
        settings: Settings | None = None,
        metrics: Instruments | None = None,
    ) -> None:
        self.settings = s = settings or Settings()
        self.metrics = m = metrics or NoMetrics()
        self.trust = trust
        self.clock = clock
        self.store = StorageThread(storage)
        self.db = storage
        self.connections = Connections()
        self.presence = Presence(self.store, s.presence_interval, metrics=m)
        self.storm = StormBreaker(s.storm)
        self.auth = Authenticator(self.store, clock)
        self.audit = AuditLog(self.store, clock)
        self.killswitch = KillSwitch(
            self.store, self.connections, clock, self.storm, audit=self.audit
        )
        self.assigner = Assigner(self.store, self.connections, signer, clock, metrics=m)
        self.engine = RolloutEngine(
            self.store,
            self.assigner,
            clock,
            timing=Timing(s.lost_after, s.apply_timeout, alive_floor=clock.now()),
            presence=self.presence,
            holder=s.holder,
            tick=s.tick,
            metrics=m,
            audit=self.audit,
        )
        self.ingestor = ReportIngestor(self.store, on_commit=self.on_reports, metrics=m)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.store.run(self.db.disconnect_all, self.settings.holder)
        self._spawn(self.ingestor.run(), "report-writer")
        self._spawn(self.presence.run(), "presence")
        self._spawn(self.engine.run(), "rollouts")
        self._spawn(self._storm_loop(), "storm-breaker")
        self._spawn(self._retention_loop(), "retention")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._crashed)
        self._tasks.append(task)

    def task_states(self) -> dict[str, bool]:
        """Each background task's name, and whether it still runs (``/healthz`` asks)."""
        return {task.get_name(): not task.done() for task in self._tasks}

    @staticmethod
    def _crashed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s died: %r", task.get_name(), task.exception())

    async def stop(self) -> None:
        self.connections.close_all()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.presence.flush()
            await self.store.run(self.db.disconnect_all, self.settings.holder)  # ours all ended
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    def on_reports(self, reports: Sequence[Report]) -> None:
        """Called after each group commit: feed the storm breaker, nudge the rollout gates."""
        wake = False
        for r in reports:
            if r.kind in ("decision", "execution") and r.outcome not in NOT_FIRING:
                self.storm.fired(r.host_id, r.policy, r.at)
            wake = wake or r.kind in ("execution", "escalation", "rejection")
        if wake:
            self.engine.wake()

    def heartbeat(self, host_id: str, firing: Sequence[str], health: dict[str, Any]) -> None:
        now = self.clock.now()  # our clock, not the agent's: lost-agent gates compare to it
        self.metrics.heartbeat()
        self.presence.seen(host_id, now, health)
        for policy in firing:
            self.storm.fired(host_id, policy, now)

    async def _retention_loop(self) -> None:
        while True:
            try:
                before = self.clock.now() - self.settings.report_retention
                pruned = await self.store.run(self.db.prune_reports, before)
                if pruned:
                    log.info("pruned %d reports older than the retention", pruned)
            except Exception:
                log.exception("report pruning failed")
            await asyncio.sleep(3600)

    async def _storm_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.storm_interval)
            try:
                trips = await self.killswitch.check_storm()
                if trips:
                    self.metrics.storm_tripped(len(trips))
            except Exception:
                log.exception("storm check failed")
