"""Hosts that connect: which bundle they should run, given the rollouts that cover them.

A host joining during a rollout gets the bundle of its wave: the new one if its wave was reached
(the rollout's next step assigns it, with the usual bookkeeping), otherwise the bundle of the last
completed rollout for its labels, the fleet's standing bundle. A completed rollout stays the
standing target, so hosts that join later converge to it too. The same standing bundle is where a
host with no bundle of its own is rolled back to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controlplane.rollouts import ACTIVE, COMPLETED
from controlplane.selectors import matches
from controlplane.storage.base import AgentRecord, AssignmentRequest, RolloutHost, RolloutRecord
from controlplane.waves import assign_waves, parse_waves

if TYPE_CHECKING:
    from controlplane.rollout_engine import RolloutEngine


async def on_join(engine: RolloutEngine, agent: AgentRecord) -> None:
    """A host connected: give it the bundle its wave says, else the last completed
    rollout's bundle for its labels (a host that joins late still converges)."""
    async with engine.lock:
        mine = [
            r
            for r in await engine.store.run(engine.db.rollouts, False)
            if matches(r.selector, agent.labels)
        ]
        active = next((r for r in mine if r.state in ACTIVE), None)
        if active is not None:
            if await engine.store.run(engine.db.rollout_host, active.id, agent.host_id):
                return  # already decided; its stored assignment went out with the Hello
            if await _reached(engine, active, agent.host_id):
                engine.wake()  # the next step assigns it, with the rollout's bookkeeping
                return
        done = [r for r in mine if r.state == COMPLETED]
        if done:
            await _standing(engine, max(done, key=lambda r: r.created_at), agent)


async def _reached(engine: RolloutEngine, rollout: RolloutRecord, host_id: str) -> bool:
    agents = await engine.agents()
    matching = [h for h, a in agents.items() if matches(rollout.selector, a.labels)]
    wave = assign_waves(rollout.id, parse_waves(rollout.waves), matching).get(host_id)
    return wave is not None and wave <= rollout.wave


async def _standing(engine: RolloutEngine, target: RolloutRecord, agent: AgentRecord) -> None:
    if agent.bundle_digest == target.bundle_digest:
        return
    current = await engine.store.run(engine.db.current_assignment, agent.host_id)
    if current is not None and current.seq > agent.last_assignment_seq:
        return  # an assignment is already on its way (sent with the Hello reply)
    if current is not None and current.bundle_digest == target.bundle_digest:
        return  # assigned before and refused or not yet applied: do not loop
    bundle = await engine.store.run(engine.db.bundle, target.bundle_digest)
    if bundle is None or bundle.expires <= engine.clock.now():
        return
    track = RolloutHost(
        target.id,
        agent.host_id,
        len(target.waves) - 1,
        agent.bundle_digest,
        agent.bundle_version,
        0,
        engine.clock.now(),
    )
    await engine.assigner.issue(
        [AssignmentRequest(agent.host_id, bundle.digest, bundle.version, target.id, track)], "join"
    )


async def standing_bundle(
    engine: RolloutEngine, completed: list[RolloutRecord], agent: AgentRecord
) -> tuple[str, int]:
    """The bundle of the newest completed rollout whose selector matches ``agent``."""
    mine = [r for r in completed if matches(r.selector, agent.labels)]
    if not mine:
        return "", 0
    bundle = await engine.store.run(
        engine.db.bundle, max(mine, key=lambda r: r.created_at).bundle_digest
    )
    return (bundle.digest, bundle.version) if bundle else ("", 0)
