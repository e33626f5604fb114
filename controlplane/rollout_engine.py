"""The rollout driver: reads storage, asks ``rollouts.plan`` what to do, and does it.

Lifecycle: ``run`` wakes every ``tick`` seconds (or at once when an apply result, a report or an
operator command arrives), takes the driver lease (so among replicas one drives rollouts), and
advances each active rollout by one step. The order of writes is what makes a restart safe:

- the rollout's new state (next wave, or rolled_back) is stored *before* the assignments it
  implies, so a crash in between leaves a state whose assignments are simply made on the next
  step (``plan`` assigns every member of the current wave not yet assigned);
- each assignment and the rollout-host row that remembers the host's previous bundle are one
  transaction (``AssignmentRequest.track``), so no host is updated without a way back;
- at start-up :meth:`recover` finishes any rollback a crash interrupted.

Auto-rollback is a *new*, higher-sequence assignment to each updated host's previous bundle,
signed with the control plane's online key: no operator key is needed at 3 AM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from agent.clock import Clock
from controlplane.assigner import Assigner, assignment_message
from controlplane.ingest import Presence
from controlplane.instrumentation import Instruments, NoMetrics
from controlplane.rollout_join import on_join, standing_bundle
from controlplane.rollouts import (
    ABORTED,
    COMPLETED,
    ROLLED_BACK,
    UPDATED,
    Timing,
    observe,
    plan,
)
from controlplane.selectors import matches
from controlplane.storage.base import (
    AgentRecord,
    AssignmentRecord,
    AssignmentRequest,
    ReportQuery,
    RolloutHost,
    RolloutRecord,
)
from controlplane.storage.runner import StorageThread

log = logging.getLogger("stanch.cp.rollouts")
LEASE = "rollout-driver"
RETRYABLE = frozenset(
    {
        "fetch_failed",
        "digest_mismatch",
        "verifier_failed",
        "trust_error",
        "install_error",
        "storage_error",
        "unreadable",
    }
)
"""Apply failures after which the agent has not consumed the assignment's sequence (see
``agent/fleet/apply.py``): the same assignment is sent again rather than failing the gate."""
RETRY_AFTER = 5.0
MAX_GATE_REPORTS = 100_000


class RolloutEngine:
    def __init__(
        self,
        store: StorageThread,
        assigner: Assigner,
        clock: Clock,
        *,
        timing: Timing | None = None,
        presence: Presence | None = None,
        holder: str = "local",
        tick: float = 1.0,
        metrics: Instruments | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or NoMetrics()
        self.db = store.storage
        self.assigner = assigner
        self.clock = clock
        self.timing = timing or Timing(alive_floor=clock.now())
        self.presence = presence
        self.holder = holder
        self.tick_seconds = tick
        self.lock = asyncio.Lock()
        """Serialises steps, operator commands and joins: one writer of rollout state."""
        self._wake = asyncio.Event()
        self._retries: dict[str, tuple[AssignmentRecord, float]] = {}

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await self.recover()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_seconds)
            self._wake.clear()
            try:
                await self.tick()
            except Exception:  # one bad step must not stop every rollout; retried next tick
                log.exception("rollout step failed")

    async def tick(self) -> None:
        now = self.clock.now()
        lease_ttl = max(3 * self.tick_seconds, 5.0)
        if not await self.store.run(self.db.acquire_lease, LEASE, self.holder, lease_ttl, now):
            return
        async with self.lock:
            await self._resend_due()
            for rollout in await self.store.run(self.db.rollouts, True):
                await self._step(rollout)

    async def agents(self) -> dict[str, AgentRecord]:
        """Stored agents with the freshest in-memory heartbeat folded in."""
        agents = {a.host_id: a for a in await self.store.run(self.db.agents)}
        if self.presence is not None:
            for host, at in self.presence.live.items():
                agent = agents.get(host)
                if agent is not None and at > agent.last_seen:
                    agents[host] = replace(agent, last_seen=at)
        return agents

    async def _step(self, rollout: RolloutRecord) -> None:
        now = self.clock.now()
        agents = await self.agents()
        matching = [h for h, a in agents.items() if matches(rollout.selector, a.labels)]
        hosts = await self.store.run(self.db.rollout_hosts, rollout.id)
        updated = [h for h in hosts if h.status in UPDATED]
        reports = []
        if updated:
            query = ReportQuery(
                since=min(h.assigned_at for h in updated),
                hosts=tuple(h.host_id for h in updated),
                limit=MAX_GATE_REPORTS,
            )
            reports = await self.store.run(self.db.reports, query)
        step = plan(
            rollout, matching, hosts, observe(hosts, agents, reports, now, self.timing), now
        )
        self.metrics.rollout_step(rollout, step.results)
        await self.store.run(self.db.put_rollout, step.rollout)
        if step.rollout.state != rollout.state or step.rollout.wave != rollout.wave:
            log.warning(
                "rollout %s: %s wave %d -> %s wave %d %s",
                rollout.id,
                rollout.state,
                rollout.wave + 1,
                step.rollout.state,
                step.rollout.wave + 1,
                step.rollout.reason,
            )
        if step.rollback:
            await self.roll_back(step.rollout, hosts)
        elif step.assign:
            await self._assign(step.rollout, step.assign, agents)

    async def _assign(
        self,
        rollout: RolloutRecord,
        members: tuple[tuple[str, int], ...],
        agents: dict[str, AgentRecord],
    ) -> None:
        bundle = await self.store.run(self.db.bundle, rollout.bundle_digest)
        if bundle is None:  # published bundles are never deleted; guard anyway
            log.error("rollout %s: bundle %s is missing", rollout.id, rollout.bundle_digest)
            return
        now = self.clock.now()
        done = [r for r in await self.store.run(self.db.rollouts, False) if r.state == COMPLETED]
        requests = []
        for host, wave in members:
            agent = agents.get(host)
            previous = agent.bundle_digest if agent else ""
            version = agent.bundle_version if agent else 0
            if not previous and agent is not None:
                # A host with no bundle yet would otherwise have got the fleet's standing
                # bundle: that is where a rollback should take it, not nowhere.
                previous, version = await standing_bundle(self, done, agent)
            track = RolloutHost(rollout.id, host, wave, previous, version, 0, now)
            requests.append(
                AssignmentRequest(host, bundle.digest, bundle.version, rollout.id, track)
            )
        await self.assigner.issue(requests)

    async def roll_back(self, rollout: RolloutRecord, hosts: list[RolloutHost]) -> None:
        """Point every updated host at the bundle it ran before, with a new higher sequence."""
        now = self.clock.now()
        requests, stranded = [], []
        for host in hosts:
            if host.status not in UPDATED:
                continue
            previous = (
                await self.store.run(self.db.bundle, host.previous_digest)
                if host.previous_digest
                else None
            )
            if previous is None or previous.expires <= now:
                why = (
                    "no previous bundle to return to"
                    if previous is None
                    else f"previous bundle v{previous.version} has expired"
                )
                stranded.append(replace(host, status="stranded", reason=why))
                continue
            track = replace(host, status="rolled_back", reason=rollout.reason)
            requests.append(
                AssignmentRequest(
                    host.host_id, previous.digest, previous.version, rollout.id, track
                )
            )
        if stranded:
            await self.store.run(self.db.put_rollout_hosts, stranded)
        await self.assigner.issue(requests, "rollback")
        self.metrics.rolled_back(rollout.state, len(requests), len(stranded))
        message = (
            f"rollout {rollout.id} {rollout.state}: {rollout.reason}; "
            f"{len(requests)} host(s) rolled back, {len(stranded)} left on the new bundle"
        )
        log.error("%s", message)
        await self.store.run(self.db.add_escalation, now, "rollout", "", message)

    async def recover(self) -> None:
        """Finish rollbacks a crash interrupted (state stored, assignments not yet made)."""
        async with self.lock:
            for rollout in await self.store.run(self.db.rollouts, False):
                if rollout.state not in (ROLLED_BACK, ABORTED):
                    continue
                hosts = await self.store.run(self.db.rollout_hosts, rollout.id)
                if any(h.status in UPDATED for h in hosts):
                    log.warning("rollout %s: finishing an interrupted rollback", rollout.id)
                    await self.roll_back(rollout, hosts)

    async def on_apply(
        self, record: AssignmentRecord, applied: bool, reason: str, at: float
    ) -> None:
        """An agent applied (or rejected) an assignment: update its rollout-host row."""
        if not record.rollout_id:
            return
        row = await self.store.run(self.db.rollout_host, record.rollout_id, record.host_id)
        if row is None or row.seq != record.seq or row.status != "assigned":
            return
        if not applied and reason in RETRYABLE:
            # The agent did not consume the assignment: send it again shortly. The apply timeout
            # still bounds how long a host may stay unapplied before the gate counts it.
            await self.store.run(self.db.put_rollout_hosts, [replace(row, reason=reason)])
            self._retries[record.host_id] = (record, self.clock.now() + RETRY_AFTER)
            return
        status = "applied" if applied else "failed"
        await self.store.run(
            self.db.put_rollout_hosts, [replace(row, status=status, reason=reason, applied_at=at)]
        )
        if not applied:
            self.wake()  # a failed apply may halt the canary: evaluate now, not next tick

    async def _resend_due(self) -> None:
        now = self.clock.now()
        for host, (record, due) in list(self._retries.items()):
            if due > now:
                continue
            del self._retries[host]
            current = await self.store.run(self.db.current_assignment, host)
            conn = self.assigner.connections.get(host)
            if conn is not None and current is not None and current.seq == record.seq:
                conn.send(assignment_message(record))

    async def on_join(self, agent: AgentRecord) -> None:
        """A host connected: see ``controlplane.rollout_join``."""
        await on_join(self, agent)
