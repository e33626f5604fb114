"""Operator commands on rollouts: start one, pause, resume or abort it.

Validation happens here, before anything is stored, so a bad request is refused whole with every
reason: an unknown or expired bundle, a malformed wave list or gate, a selector that overlaps an
active rollout. Commands take the engine's lock, so they never interleave with a rollout step.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from agent.bundle.manifest import format_time
from controlplane.errors import Conflict, InvalidRequest, NotFound, Refused
from controlplane.rollout_engine import RolloutEngine
from controlplane.rollouts import ABORTED, ACTIVE, PAUSED, RUNNING, settings_of
from controlplane.selectors import format_selector, overlap
from controlplane.storage.base import BundleRecord, RolloutRecord
from controlplane.waves import DEFAULT_WAVES, parse_waves

MIN_PREFIX = 8


@dataclass(frozen=True)
class RolloutRequest:
    bundle: str
    selector: Mapping[str, str]
    waves: Sequence[str] = DEFAULT_WAVES
    bake_seconds: float = 600.0
    gates: Mapping[str, str] = field(default_factory=dict)
    gate_modes: Mapping[str, str] = field(default_factory=dict)
    by: str = ""


async def resolve_bundle(engine: RolloutEngine, ref: str) -> BundleRecord:
    """A published bundle by digest or unique digest prefix (as ``git`` resolves commits)."""
    ref = ref.strip().lower().removesuffix(".bundle")
    if len(ref) < MIN_PREFIX:
        raise InvalidRequest(f"bundle {ref!r}: give its digest (at least {MIN_PREFIX} hex digits)")
    found = [b for b in await engine.store.run(engine.db.bundles) if b.digest.startswith(ref)]
    if not found:
        raise NotFound(f"bundle {ref}: not published here; run 'opsctl bundle publish FILE'")
    if len(found) > 1:
        raise InvalidRequest(f"bundle {ref}: ambiguous prefix ({len(found)} bundles); use more")
    return found[0]


async def start(engine: RolloutEngine, req: RolloutRequest) -> RolloutRecord:
    bundle = await resolve_bundle(engine, req.bundle)
    now = engine.clock.now()
    if bundle.expires <= now:
        raise Refused(
            f"{bundle.name} v{bundle.version} expired at {format_time(bundle.expires)}; agents "
            f"would refuse it. Re-sign a fresh bundle"
        )
    if req.bake_seconds < 0:
        raise InvalidRequest("--bake must not be negative")
    waves = tuple(spec.text for spec in parse_waves(req.waves))
    rollout = RolloutRecord(
        id=f"{bundle.name}-v{bundle.version}-{secrets.token_hex(3)}",
        bundle_digest=bundle.digest,
        selector=dict(req.selector),
        waves=waves,
        bake_seconds=req.bake_seconds,
        gates=dict(req.gates),
        gate_modes=dict(req.gate_modes),
        state=RUNNING,
        wave=0,
        wave_started_at=now,
        created_at=now,
        updated_at=now,
        by=req.by,
    )
    settings_of(rollout)  # every problem with waves and gates, refused at once
    async with engine.lock:
        for other in await engine.store.run(engine.db.rollouts, True):
            if overlap(other.selector, rollout.selector):
                raise Conflict(
                    f"rollout {other.id} ({format_selector(other.selector)}) is {other.state} "
                    f"and can reach the same hosts as {format_selector(rollout.selector)}; "
                    f"wait for it to finish, or 'opsctl rollout abort {other.id}'"
                )
        await engine.store.run(engine.db.put_rollout, rollout)
    engine.wake()
    return rollout


async def control(
    engine: RolloutEngine, rollout_id: str, action: str, reason: str, by: str
) -> RolloutRecord:
    async with engine.lock:
        rollout = await find(engine, rollout_id)
        now = engine.clock.now()
        note = f"{action} by {by or 'operator'}" + (f": {reason}" if reason else "")
        if action == "pause":
            _require(rollout, (RUNNING,), action)
            updated = replace(rollout, state=PAUSED, reason=note, updated_at=now)
        elif action == "resume":
            _require(rollout, (PAUSED,), action)
            # The bake of the current wave starts over: hosts were not watched as a whole
            # while an operator held the rollout, so no partial bake counts.
            updated = replace(
                rollout, state=RUNNING, reason="", wave_started_at=now, updated_at=now
            )
        elif action == "abort":
            _require(rollout, ACTIVE, action)
            updated = replace(rollout, state=ABORTED, reason=note, updated_at=now)
        else:
            raise InvalidRequest(f"unknown action {action!r}: use pause, resume or abort")
        await engine.store.run(engine.db.put_rollout, updated)
        if action == "abort":
            hosts = await engine.store.run(engine.db.rollout_hosts, rollout.id)
            await engine.roll_back(updated, hosts)
    engine.wake()
    return updated


async def find(engine: RolloutEngine, rollout_id: str) -> RolloutRecord:
    """A rollout by id; the empty id means the newest one."""
    if rollout_id:
        rollout = await engine.store.run(engine.db.rollout, rollout_id)
        if rollout is None:
            raise NotFound(f"rollout {rollout_id}: no such rollout; see 'opsctl rollout list'")
        return rollout
    every = await engine.store.run(engine.db.rollouts, False)
    if not every:
        raise NotFound("no rollouts yet; start one with 'opsctl rollout policy BUNDLE'")
    return every[-1]


def _require(rollout: RolloutRecord, states: Sequence[str], action: str) -> None:
    if rollout.state not in states:
        raise Refused(f"rollout {rollout.id} is {rollout.state}; cannot {action} it")
