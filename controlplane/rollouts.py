"""The rollout state machine: given what is stored and what the hosts did, what happens next.

Pure: :func:`observe` turns stored facts into gate observations and :func:`plan` turns a rollout
plus observations into a :class:`Step` (hosts to assign, the next state, whether to roll back).
Neither reads a clock or a database; ``controlplane.rollout_engine`` does that and applies the
step. Because every input is stored, a control plane restarted mid-rollout recomputes the same
step from the same rows and carries on where it stopped.

States: ``running`` -> ``completed``, or -> ``rolled_back`` when an enforced gate fails, or ->
``aborted`` by an operator; ``paused`` stops progress (no new hosts, no next wave) but not the
gates: a paused rollout that turns unhealthy still rolls back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from controlplane.gates import GateResult, GateSetting, Observations, evaluate, parse_gates
from controlplane.storage.base import AgentRecord, Report, RolloutHost, RolloutRecord
from controlplane.waves import WaveSpec, assign_waves, parse_waves, targets

RUNNING, PAUSED, COMPLETED, ROLLED_BACK, ABORTED = (
    "running",
    "paused",
    "completed",
    "rolled_back",
    "aborted",
)
ACTIVE = (RUNNING, PAUSED)
UPDATED = ("assigned", "applied", "failed")
"""Host statuses that mean "this host was given the new bundle and has not been rolled back"."""
BAD_OUTCOMES = frozenset({"failed", "not_fixed", "interrupted"})
MAX_NAMED = 5


@dataclass(frozen=True)
class Timing:
    lost_after: float = 60.0
    """An updated host silent this long counts against ``agents_lost``."""
    apply_timeout: float = 300.0
    """An assigned host that has not applied within this counts against ``failed_applies``."""
    alive_floor: float = 0.0
    """When this control plane started: silence while it was down is not the hosts' fault."""

    def connected(self, agent: AgentRecord, now: float, heard: float = 0.0) -> bool:
        """Stored as connected and heard from within ``lost_after`` (``heard``: a newer time
        this replica knows of, e.g. a heartbeat not flushed yet). A replica killed without its
        stop leaves its agents' rows connected until they stream to another replica; silence
        counts only since this replica started."""
        seen = max(agent.last_seen, heard, self.alive_floor)
        return agent.connected and now - seen <= self.lost_after


@dataclass(frozen=True)
class Step:
    rollout: RolloutRecord
    assign: tuple[tuple[str, int], ...] = ()
    """(host, wave) pairs to give the rollout's bundle now."""
    rollback: bool = False
    results: tuple[GateResult, ...] = ()


def observe(
    hosts: Sequence[RolloutHost],
    agents: Mapping[str, AgentRecord],
    reports: Sequence[Report],
    now: float,
    timing: Timing,
) -> Observations:
    """Gate inputs from the updated hosts' apply results, presence and reports since update."""
    updated = [h for h in hosts if h.status in UPDATED]
    failed = [f"{h.host_id} ({h.reason or 'rejected'})" for h in updated if h.status == "failed"]
    pending = 0
    for h in updated:
        if h.status == "assigned":
            if now - h.assigned_at >= timing.apply_timeout:
                last = f"; last: {h.reason}" if h.reason else ""
                failed.append(f"{h.host_id} (not applied within {timing.apply_timeout:g}s{last})")
            else:
                pending += 1
    lost = []
    for h in updated:
        agent = agents.get(h.host_id)
        seen = max(agent.last_seen if agent else 0.0, timing.alive_floor, h.assigned_at)
        if now - seen > timing.lost_after:
            lost.append(h.host_id)
    since = {h.host_id: h.applied_at or h.assigned_at for h in updated}
    fresh = [r for r in reports if r.host_id in since and r.at >= since[r.host_id]]
    executions = [r for r in fresh if r.kind == "execution"]
    bad = [r for r in executions if r.outcome in BAD_OUTCOMES]
    escalations = [r for r in fresh if r.kind == "escalation"]
    return Observations(
        updated=len(updated),
        failed_applies=len(failed),
        pending=pending,
        lost=len(lost),
        executions=len(executions),
        bad_executions=len(bad),
        escalations=len(escalations),
        details={
            "failed_applies": _names(failed),
            "agents_lost": _names(lost),
            "failure_rate": _names(f"{r.policy} {r.outcome} on {r.host_id}" for r in bad),
            "escalations": _names(f"{r.policy} on {r.host_id}: {r.reason}" for r in escalations),
        },
    )


def _names(items: Iterable[str]) -> str:
    listed = list(items)
    shown = ", ".join(listed[:MAX_NAMED])
    return shown + (f" and {len(listed) - MAX_NAMED} more" if len(listed) > MAX_NAMED else "")


def plan(
    rollout: RolloutRecord,
    matching: Sequence[str],
    hosts: Sequence[RolloutHost],
    obs: Observations,
    now: float,
) -> Step:
    """The next step for ``rollout``; ``matching`` are the host ids its selector matches now."""
    if rollout.state not in ACTIVE:
        return Step(rollout)
    specs = parse_waves(rollout.waves)
    settings = parse_gates(rollout.gates, rollout.gate_modes)
    results = tuple(evaluate(settings, obs))
    record = replace(rollout, gate_results=tuple(r.to_dict() for r in results), updated_at=now)
    halting = [r for r in results if r.halts]
    if halting:
        reason = f"wave {rollout.wave + 1} ({specs[rollout.wave].text}): " + "; ".join(
            r.describe() for r in halting
        )
        return Step(replace(record, state=ROLLED_BACK, reason=reason), (), True, results)
    if rollout.state == PAUSED:
        return Step(record, (), False, results)
    waves = assign_waves(rollout.id, specs, matching)
    done = {h.host_id for h in hosts}
    wave = rollout.wave
    # A wave is over only when every member was assigned, has applied (``pending``) and baked.
    # Members not assigned yet (the first step of a rollout, or a restart between storing a new
    # wave and assigning it) are assigned by this step first: moving on now would merge them into
    # the next wave, or complete a rollout that never reached them.
    unassigned = any(w <= wave and h not in done for h, w in waves.items())
    baked = now >= rollout.wave_started_at + rollout.bake_seconds
    if baked and obs.pending == 0 and not unassigned:
        following = _next_wave(specs, len(waves), wave)
        if following is None:
            return Step(replace(record, state=COMPLETED, reason=""), (), False, results)
        wave = following
        record = replace(record, wave=wave, wave_started_at=now)
    assign = tuple(sorted((h, w) for h, w in waves.items() if w <= wave and h not in done))
    return Step(record, assign, False, results)


def _next_wave(specs: Sequence[WaveSpec], hosts: int, wave: int) -> int | None:
    """The next wave that adds hosts, or None when the current one already holds them all."""
    counts = targets(specs, hosts)
    for index in range(wave + 1, len(specs)):
        if counts[index] > counts[wave]:
            return index
    return None


def settings_of(rollout: RolloutRecord) -> tuple[tuple[WaveSpec, ...], dict[str, GateSetting]]:
    """Validate a rollout's plan and gates (at creation, so a bad one is refused up front)."""
    return parse_waves(rollout.waves), parse_gates(rollout.gates, rollout.gate_modes)
