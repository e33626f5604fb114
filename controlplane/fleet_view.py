"""The fleet as operators read it: one service layer under both the Admin API and the web console.

``opsctl agents list``, ``explain`` and ``reports pareto`` (through ``admin_service``) and the
console's Fleet, Host and Toil pages ask the same functions, so a page and a command can never
disagree about which host is connected, which bundle is stale or which policy saved the most
toil. Everything reads through a storage thread and nothing here writes: the plane's own
(``plane.store``) unless the caller passes ``reads``, a read-only storage instance on its own
thread (``controlplane.storage.reader``; the console does, so a page does not wait behind the
presence flush and the report commits on the plane's thread).

Records stay records (frozen dataclasses); turning them into protobuf messages is ``convert``'s
job, turning them into HTML the console's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from agent.bundle.rejection import BundleRejected
from agent.bundle.verify import verify_bundle
from agent.policy.loader import load_text
from controlplane import pareto
from controlplane.errors import NotFound
from controlplane.plane import ControlPlane
from controlplane.rollouts import Timing
from controlplane.selectors import matches
from controlplane.storage.base import (
    AgentRecord,
    AssignmentRecord,
    BundleRecord,
    PauseRecord,
    Report,
    ReportQuery,
    RolloutHost,
    RolloutRecord,
)
from controlplane.storage.runner import StorageThread

MAX_PAGE = 500


@dataclass(frozen=True)
class AgentView:
    agent: AgentRecord
    assigned: AssignmentRecord | None
    last_seen: float
    """The newest heartbeat: stored, or held in memory since the last presence flush."""
    bundle_name: str = ""
    stale: bool = False
    """The agent runs a bundle that has expired (it says so, or the store knows it expired)."""
    behind: bool = False
    """The control plane assigned a bundle the agent does not run yet."""
    paused: tuple[str, ...] = ()
    """Scopes of the central pauses that reach this host (``*`` = every policy)."""


@dataclass(frozen=True)
class FleetPage:
    agents: list[AgentView]
    total: int
    """Agents matching the selector (the page is a slice of them)."""
    offset: int
    limit: int
    connected: int
    stale: int
    behind: int
    paused: int


@dataclass(frozen=True)
class Explanation:
    host: str
    policy: str
    agent: AgentView | None
    reports: list[Report]
    pauses: list[PauseRecord]


@dataclass(frozen=True)
class RolloutView:
    rollout: RolloutRecord
    bundle: BundleRecord | None
    hosts: list[RolloutHost]
    matching: int
    """Agents the selector matches now (wave targets are shares of it)."""


def _source(plane: ControlPlane, reads: StorageThread | None) -> StorageThread:
    """Where to read: ``reads`` when given, else the plane's own storage thread."""
    return reads if reads is not None else plane.store


async def _fleet(
    plane: ControlPlane, selector: Mapping[str, str], reads: StorageThread | None
) -> tuple[list[AgentRecord], _Context]:
    store = _source(plane, reads)
    run, db = store.run, store.storage
    found = [a for a in await run(db.agents) if matches(selector, a.labels)]
    found.sort(key=lambda a: a.host_id)
    context = _Context(
        assigned=await run(db.current_assignments),
        bundles={b.digest: b for b in await run(db.bundles)},
        pauses=await run(db.pauses, plane.clock.now()),
        live=plane.presence.live,
        now=plane.clock.now(),
        timing=plane.engine.timing,
    )
    return found, context


async def agents(
    plane: ControlPlane, selector: Mapping[str, str], reads: StorageThread | None = None
) -> list[AgentView]:
    """Every agent matching ``selector``, ordered by host id."""
    found, context = await _fleet(plane, selector, reads)
    return [context.view(a) for a in found]


async def fleet_page(
    plane: ControlPlane,
    selector: Mapping[str, str],
    offset: int = 0,
    limit: int = 100,
    reads: StorageThread | None = None,
) -> FleetPage:
    """One page of :func:`agents`, with counts over the whole selection. Only the page's rows
    become :class:`AgentView` (10,000 agents: the counts are cheap, the views are not)."""
    limit = max(1, min(limit, MAX_PAGE))
    found, c = await _fleet(plane, selector, reads)
    offset = max(0, min(offset, max(0, len(found) - 1)))
    return FleetPage(
        agents=[c.view(a) for a in found[offset : offset + limit]],
        total=len(found),
        offset=offset,
        limit=limit,
        connected=sum(1 for a in found if c.connected(a)),
        stale=sum(1 for a in found if c.stale(a)),
        behind=sum(1 for a in found if c.behind(a)),
        paused=sum(1 for a in found if c.paused(a)) if c.pauses else 0,
    )


@dataclass(frozen=True)
class _Context:
    """What deciding an agent's flags needs besides the agent itself (read once per page)."""

    assigned: Mapping[str, AssignmentRecord]
    bundles: Mapping[str, BundleRecord]
    pauses: Sequence[PauseRecord]
    live: Mapping[str, float]
    now: float
    timing: Timing

    def connected(self, agent: AgentRecord) -> bool:
        """``Timing.connected``, with the heartbeats this replica has not flushed yet."""
        return self.timing.connected(agent, self.now, self.live.get(agent.host_id, 0.0))

    def stale(self, agent: AgentRecord) -> bool:
        bundle = self.bundles.get(agent.bundle_digest)
        expired = bundle is not None and bundle.expires <= self.now
        return expired or bool(agent.health.get("bundle_stale"))

    def behind(self, agent: AgentRecord) -> bool:
        assigned = self.assigned.get(agent.host_id)
        return (
            assigned is not None
            and assigned.status != "rejected"
            and assigned.bundle_digest != agent.bundle_digest
        )

    def paused(self, agent: AgentRecord) -> tuple[str, ...]:
        return tuple(sorted({p.scope for p in self.pauses if matches(p.selector, agent.labels)}))

    def view(self, agent: AgentRecord) -> AgentView:
        bundle = self.bundles.get(agent.bundle_digest)
        return AgentView(
            agent=replace(agent, connected=self.connected(agent)),
            assigned=self.assigned.get(agent.host_id),
            last_seen=max(agent.last_seen, self.live.get(agent.host_id, 0.0)),
            bundle_name=bundle.name if bundle else "",
            stale=self.stale(agent),
            behind=self.behind(agent),
            paused=self.paused(agent),
        )


async def agent(
    plane: ControlPlane, host: str, reads: StorageThread | None = None
) -> AgentView | None:
    store = _source(plane, reads)
    run, db = store.run, store.storage
    record = await run(db.agent, host)
    if record is None:
        return None
    assigned = await run(db.current_assignment, host)
    context = _Context(
        assigned={host: assigned} if assigned else {},
        bundles={b.digest: b for b in await run(db.bundles)},
        pauses=await run(db.pauses, plane.clock.now()),
        live=plane.presence.live,
        now=plane.clock.now(),
        timing=plane.engine.timing,
    )
    return context.view(record)


async def explain(
    plane: ControlPlane,
    host: str,
    policy: str,
    limit: int = 20,
    reads: StorageThread | None = None,
) -> Explanation:
    """What ``opsctl explain`` and the console's Host page show: the agent, its last reports on
    ``policy`` (every policy when empty), newest first, and the central pauses that reach it."""
    store = _source(plane, reads)
    view = await agent(plane, host, reads)
    query = ReportQuery(host=host, policy=policy, limit=limit)
    reports = await store.run(store.storage.reports, query)
    if view is None and not reports:
        raise NotFound(f"host {host}: never connected; see 'opsctl agents list'")
    pauses = await store.run(store.storage.pauses, plane.clock.now())
    mine = [
        p
        for p in pauses
        if (not policy or p.scope in ("*", policy))
        and (view is None or matches(p.selector, view.agent.labels))
    ]
    return Explanation(host, policy, view, reports, mine)


async def toil(
    plane: ControlPlane, since: float, limit: int = 20, reads: StorageThread | None = None
) -> tuple[list[pareto.ParetoRow], list[pareto.ParetoRow]]:
    """The Pareto of executions since ``since``: (per policy, per host and policy)."""
    store = _source(plane, reads)
    query = ReportQuery(kind="execution", since=since, limit=1_000_000)
    reports = await store.run(store.storage.reports, query)
    minutes: dict[str, float] = {}
    for bundle in sorted(await store.run(store.storage.bundles), key=lambda b: b.published_at):
        minutes.update(bundle.manual_minutes)  # the newest definition wins
    executions = [
        pareto.Execution(r.host_id, r.policy, r.outcome, r.at, r.body_json) for r in reports
    ]
    return pareto.pareto(executions, minutes, limit)


async def runbook(
    plane: ControlPlane, digest: str, policy: str, reads: StorageThread | None = None
) -> str:
    """The runbook link of ``policy`` in published bundle ``digest``; "" when it has none.

    The bundle is verified again (without the expiry check: it was accepted once and may still be
    running) before a word of it is shown, as ``publish`` did when it came in."""
    store = _source(plane, reads)
    data = await store.run(store.storage.bundle_data, digest) if digest else None
    if not data:
        return ""
    try:
        verified = verify_bundle(data, plane.trust, plane.clock.now(), check_expiry=False)
    except BundleRejected:
        return ""
    for entry in verified.manifest.policies:
        text = verified.files[entry.path].decode("utf-8", errors="replace")
        for found in load_text(text, entry.path)[0]:
            if found.name == policy:
                return found.runbook
    return ""


async def rollouts(
    plane: ControlPlane, limit: int = 20, reads: StorageThread | None = None
) -> list[RolloutView]:
    """The newest ``limit`` rollouts, newest first, each with the hosts it touched."""
    store = _source(plane, reads)
    run, db = store.run, store.storage
    newest = sorted(await run(db.rollouts, False), key=lambda r: r.created_at, reverse=True)
    every = await run(db.agents) if newest else []
    views = []
    for r in newest[:limit]:
        matching = sum(1 for a in every if matches(r.selector, a.labels))
        bundle = await run(db.bundle, r.bundle_digest)
        views.append(RolloutView(r, bundle, await run(db.rollout_hosts, r.id), matching))
    return views


async def pauses(plane: ControlPlane, reads: StorageThread | None = None) -> list[PauseRecord]:
    """The central pauses in force now (as ``opsctl pauses list`` shows them)."""
    store = _source(plane, reads)
    found: list[PauseRecord] = await store.run(store.storage.pauses, plane.clock.now())
    return found
