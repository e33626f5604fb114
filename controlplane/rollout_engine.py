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
signed with the control plane's online key: no operator key is needed at 3 AM. A gate's halt (and
a rollback finished after a crash) is on the audit log as the control plane's own action, with the
reason and every gate's value, limit and mode; so is completing (``rollout.complete``, with the
hosts updated and the gates' last values): the driver, not an operator, decided the last wave
was good. The lease, and the delivery pass every replica runs each tick (driver or not), live in
``controlplane.rollout_lease``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from agent.clock import Clock
from controlplane.assigner import Assigner
from controlplane.audit import AuditLog
from controlplane.audit_system import record_automatic
from controlplane.ingest import Presence
from controlplane.instrumentation import Instruments, NoMetrics
from controlplane.rollout_join import on_join, standing_bundle
from controlplane.rollout_lease import LEASE, Delivery, DriverLease
from controlplane.rollouts import (
    ABORTED,
    COMPLETED,
    ROLLED_BACK,
    UPDATED,
    Step,
    Timing,
    observe,
    plan,
)
from controlplane.selectors import matches
from controlplane.storage.base import (
    AgentRecord,
    AppliedRecord,
    ApplyResult,
    AssignmentRecord,
    AssignmentRequest,
    ReportQuery,
    RolloutHost,
    RolloutRecord,
    settle_rollout_host,
)
from controlplane.storage.runner import StorageThread

log = logging.getLogger("stanch.cp.rollouts")
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
        audit: AuditLog | None = None,
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
        self._open: dict[str, set[str]] = {}
        """Per active rollout, hosts assigned and not yet applied: the last one's apply wakes
        the driver at once (a hint only; the tick still steps every rollout)."""
        self._settled: dict[str, set[str]] = {}
        """Applies seen while a step reads its rollout's hosts (kept out of ``_open``)."""
        self.audit = audit or AuditLog(store, clock)
        """Where automatic halts, completions and lease takeovers are recorded."""
        self.source = f"{LEASE}/{holder}"
        """The audit ``source`` of what this replica's driver does on its own."""
        self.lease = DriverLease(store, clock, holder, tick, self.audit, self.source)
        self.delivery = Delivery(store, assigner.connections, clock, holder)

    @property
    def driving(self) -> bool:
        """Whether this replica held the driver lease at its last attempt."""
        return self.lease.driving

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await self.recover()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.tick_seconds)
                self._wake.clear()
                try:
                    await self.tick()
                except Exception:  # one bad step must not stop every rollout; retried next tick
                    log.exception("rollout step failed")
        finally:
            if self.driving:  # a clean stop hands the lease over now, not after its TTL
                await self.lease.release()

    async def tick(self) -> None:
        async with self.lock:
            await self._resend_due()
        await self.delivery.deliver()  # what any replica issued, to the streams here, once each
        if not await self._lease():
            return
        async with self.lock:
            for rollout in await self.store.run(self.db.rollouts, True):
                if not await self._lease():  # renewed before each step: a replica that lost
                    return  # the lease (a long stall) stops before its next write
                await self._step(rollout)

    async def _lease(self) -> bool:
        """Take or renew the driver lease (``controlplane.rollout_lease``)."""
        return await self.lease.hold()

    async def agents(self) -> dict[str, AgentRecord]:
        """Stored agents with the freshest in-memory heartbeat folded in (without their
        health summaries, which no step reads: 10,000 of them cost more than the rest)."""
        agents = {a.host_id: a for a in await self.store.run(self.db.agents, False)}
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
        settled = self._settled[rollout.id] = set()
        hosts = await self.store.run(self.db.rollout_hosts, rollout.id)
        del self._settled[rollout.id]
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
        if await self.store.run(self.db.rollout, rollout.id) != rollout:
            # Changed since this tick read it: an operator command on another replica (this
            # lock only orders this process). Re-planned from the stored state next tick.
            log.info("rollout %s changed during its step; planned again next tick", rollout.id)
            return
        self.metrics.rollout_step(rollout, step.results)
        await self.store.run(self.db.put_rollout, step.rollout)
        if step.rollback or step.rollout.state != rollout.state:
            self._open.pop(rollout.id, None)
        else:
            waiting = {h.host_id for h in hosts if h.status == "assigned"} - settled
            self._open[rollout.id] = waiting | {h for h, _ in step.assign}
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
            await self._audit_halt(step)
            await self.roll_back(step.rollout, hosts)
        elif step.assign:
            await self._assign(step.rollout, step.assign, agents)
        if step.rollout.state == COMPLETED and rollout.state != COMPLETED:
            await self._audit_completed(step, hosts)

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
        await self._issue(requests, "rollout")

    async def _issue(self, requests: list[AssignmentRequest], kind: str) -> None:
        """Issue and send to the hosts connected here (each stream remembers the sequence, so
        no delivery pass sends it again); other replicas' passes deliver it to theirs."""
        await self.assigner.issue(requests, kind)

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
        await self._issue(requests, "rollback")
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
                    detail = {"state": rollout.state, "reason": rollout.reason}
                    target = f"id={rollout.id}"
                    await record_automatic(
                        self.audit, "rollout.rollback_resumed", target, self.source, detail
                    )

    async def _audit_halt(self, step: Step) -> None:
        """A gate halted the rollout: audited with the reason and every gate's value, limit,
        threshold and mode at that step (stored state first, then this, then the rollback)."""
        rollout = step.rollout
        detail = {
            "bundle": rollout.bundle_digest,
            "wave": rollout.wave + 1,
            "reason": rollout.reason,
            "halted_by": [r.name for r in step.results if r.halts],
            "gates": [r.to_dict() for r in step.results],
        }
        target = f"id={rollout.id}"
        await record_automatic(self.audit, "rollout.rollback", target, self.source, detail)

    async def _audit_completed(self, step: Step, hosts: list[RolloutHost]) -> None:
        """The last wave baked with every enforced gate passing: the driver marked the rollout
        completed. Audited with the hosts it updated and the gates' last values."""
        rollout = step.rollout
        detail = {
            "bundle": rollout.bundle_digest,
            "waves": len(rollout.waves),
            "hosts": sum(1 for h in hosts if h.status == "applied"),
            "gates": [r.to_dict() for r in step.results],
        }
        target = f"id={rollout.id}"
        await record_automatic(self.audit, "rollout.complete", target, self.source, detail)

    async def on_apply(
        self, record: AssignmentRecord, applied: bool, reason: str, at: float
    ) -> None:
        """An agent applied (or rejected) an assignment already recorded alone
        (``record_apply``): update its rollout-host row in a transaction of its own. The
        Fleet service records both in one group commit instead (``record_applies``)."""
        if not record.rollout_id:
            return
        row = await self.store.run(self.db.rollout_host, record.rollout_id, record.host_id)
        retryable = not applied and reason in RETRYABLE
        result = ApplyResult(record.host_id, record.seq, "", applied, reason, at, reason, retryable)
        settled = settle_rollout_host(row, result)
        if settled is None:
            return
        await self.store.run(self.db.put_rollout_hosts, [settled])
        self.applied(AppliedRecord(record, settled), applied)

    def applied(self, done: AppliedRecord, applied: bool) -> None:
        """An apply result is durable with its rollout-host row (``record_applies``): resend
        an unconsumed assignment shortly, or settle the host (the storage did what
        :meth:`on_apply` does, in the same transaction)."""
        row, record = done.rollout_host, done.assignment
        if row is None:
            return
        if row.status == "assigned":  # retryable: the agent did not consume the assignment
            self._retries[record.host_id] = (record, self.clock.now() + RETRY_AFTER)
            return
        self._settle(row.rollout_id, row.host_id, applied)

    def _settle(self, rollout_id: str, host_id: str, applied: bool) -> None:
        """A host's apply is decided: wake the driver now when it was a failure (it may halt
        the canary) or the last host of its rollout's wave (the wave may end), not next tick."""
        if rollout_id in self._settled:
            self._settled[rollout_id].add(host_id)
        waiting = self._open.get(rollout_id, set())
        last = host_id in waiting and len(waiting) == 1
        waiting.discard(host_id)
        if not applied or last:
            self.wake()

    async def _resend_due(self) -> None:
        now = self.clock.now()
        for host, (record, due) in list(self._retries.items()):
            if due > now:
                continue
            del self._retries[host]
            current = await self.store.run(self.db.current_assignment, host)
            conn = self.assigner.connections.get(host)
            if conn is not None and current is not None and current.seq == record.seq:
                conn.send_assignment(record, again=True)  # not consumed: the same seq again

    async def on_join(self, agent: AgentRecord) -> None:
        """A host connected: see ``controlplane.rollout_join``."""
        await on_join(self, agent)
