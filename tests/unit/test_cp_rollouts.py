"""The rollout state machine as a pure function of stored facts and an injected time."""

from __future__ import annotations

from dataclasses import replace

from controlplane.gates import Observations
from controlplane.rollouts import Timing, observe, plan
from controlplane.storage.base import AgentRecord, Report, RolloutHost, RolloutRecord
from controlplane.waves import assign_waves, parse_waves

T0 = 1_800_000_000.0
HOSTS = [f"h{i:02d}" for i in range(20)]


def rollout(**kw: object) -> RolloutRecord:
    base = RolloutRecord(
        id="r1",
        bundle_digest="d2",
        selector={"env": "prod"},
        waves=("1", "25%", "100%"),
        bake_seconds=60.0,
        gates={},
        gate_modes={},
        state="running",
        wave=0,
        wave_started_at=T0,
        created_at=T0,
        updated_at=T0,
    )
    return replace(base, **kw)


def host(name: str, wave: int = 0, status: str = "applied", at: float = T0) -> RolloutHost:
    return RolloutHost("r1", name, wave, "d1", 1, 1, at, status, applied_at=at + 1)


def members(wave: int) -> set[str]:
    waves = assign_waves("r1", parse_waves(["1,25%,100%"]), HOSTS)
    return {h for h, w in waves.items() if w <= wave}


def test_the_first_step_assigns_the_canary_only() -> None:
    step = plan(rollout(), HOSTS, [], Observations(), T0 + 1)
    assert {h for h, _ in step.assign} == members(0) and len(step.assign) == 1
    assert step.rollout.state == "running" and step.rollout.wave == 0 and not step.rollback


def test_no_next_wave_before_the_bake_ends() -> None:
    done = [host(h) for h in members(0)]
    step = plan(rollout(), HOSTS, done, Observations(updated=1), T0 + 59)
    assert step.assign == () and step.rollout.wave == 0


def test_after_the_bake_the_next_wave_is_assigned_cumulatively() -> None:
    done = [host(h) for h in members(0)]
    step = plan(rollout(), HOSTS, done, Observations(updated=1), T0 + 60)
    assert step.rollout.wave == 1 and step.rollout.wave_started_at == T0 + 60
    assert {h for h, _ in step.assign} == members(1) - members(0)
    assert all(w == 1 for _, w in step.assign)


def test_a_wave_is_not_over_before_its_members_were_assigned() -> None:
    # bake 0 (or a first step later than the bake): the canary is assigned, not skipped
    step = plan(rollout(bake_seconds=0.0), HOSTS, [], Observations(), T0 + 1)
    assert step.rollout.wave == 0 and {h for h, _ in step.assign} == members(0)
    single = plan(rollout(waves=("100%",), bake_seconds=0.0), HOSTS, [], Observations(), T0 + 1)
    assert single.rollout.state == "running" and len(single.assign) == len(HOSTS)
    # a restart after "wave 3 started" was stored but before its hosts were assigned, with the
    # bake long over: the last wave's hosts are assigned, the rollout does not complete
    stored = rollout(wave=2, wave_started_at=T0)
    done = [host(h, 0 if h in members(0) else 1) for h in members(1)]
    late = plan(stored, HOSTS, done, Observations(updated=len(done)), T0 + 600)
    assert late.rollout.state == "running" and late.rollout.wave == 2
    assert {h for h, _ in late.assign} == set(HOSTS) - members(1)


def test_pending_applies_hold_the_wave() -> None:
    done = [host(h, status="assigned") for h in members(0)]
    step = plan(rollout(), HOSTS, done, Observations(updated=1, pending=1), T0 + 600)
    assert step.rollout.wave == 0 and step.assign == ()


def test_waves_that_add_no_host_are_skipped_and_the_last_completes() -> None:
    small = HOSTS[:3]  # 1, 25% of 3 = 1, 100% = 3
    waves = assign_waves("r1", parse_waves(["1,25%,100%"]), small)
    canary = [host(h) for h, w in waves.items() if w == 0]
    step = plan(rollout(), small, canary, Observations(updated=1), T0 + 60)
    assert step.rollout.wave == 2 and len(step.assign) == 2
    everyone = [host(h, w) for h, w in waves.items()]
    final = plan(step.rollout, small, everyone, Observations(updated=3), T0 + 120)
    assert final.rollout.state == "completed" and final.assign == ()


def test_an_enforced_gate_failure_halts_and_rolls_back_with_the_reason() -> None:
    obs = Observations(updated=1, failed_applies=1, details={"failed_applies": "h01 (boom)"})
    step = plan(rollout(), HOSTS, [host("h01", status="failed")], obs, T0 + 5)
    assert step.rollback and step.assign == ()
    assert step.rollout.state == "rolled_back"
    assert step.rollout.reason == (
        "wave 1 (1): gate failed_applies: 1 > 0 (threshold 0): h01 (boom)"
    )


def test_a_paused_rollout_does_not_progress_but_still_rolls_back() -> None:
    paused = rollout(state="paused")
    done = [host(h) for h in members(0)]
    assert plan(paused, HOSTS, done, Observations(updated=1), T0 + 999).assign == ()
    bad = plan(paused, HOSTS, done, Observations(updated=1, lost=1), T0 + 999)
    assert bad.rollback and bad.rollout.state == "rolled_back"


def test_finished_rollouts_do_nothing() -> None:
    for state in ("completed", "rolled_back", "aborted"):
        step = plan(rollout(state=state), HOSTS, [], Observations(lost=5), T0)
        assert step.rollout.state == state and not step.assign and not step.rollback


def agent(name: str, seen: float) -> AgentRecord:
    return AgentRecord(name, {"env": "prod"}, last_seen=seen, connected=True)


def test_observe_counts_failures_timeouts_losses_and_fresh_reports_only() -> None:
    timing = Timing(lost_after=60, apply_timeout=300, alive_floor=T0)
    hosts = [
        host("ok", status="applied"),
        host("refused", status="failed"),
        replace(host("slow", status="assigned"), assigned_at=T0 - 400),
        replace(host("new", status="assigned"), assigned_at=T0 + 90),
        host("gone", status="rolled_back"),
    ]
    agents = {
        "ok": agent("ok", T0 + 100),
        "refused": agent("refused", T0 + 100),
        "slow": agent("slow", T0 + 10),
        "new": agent("new", T0 + 100),
    }
    reports = [
        Report("ok", 1, "execution", "p", T0 - 50, "failed", "", "{}"),  # before the update
        Report("ok", 2, "execution", "p", T0 + 20, "failed", "", "{}"),
        Report("ok", 3, "execution", "p", T0 + 30, "fixed", "", "{}"),
        Report("ok", 4, "escalation", "p", T0 + 40, "escalated", "breaker_open", "{}"),
    ]
    obs = observe(hosts, agents, reports, T0 + 100, timing)
    assert obs.updated == 4 and obs.failed_applies == 2 and obs.pending == 1
    assert obs.lost == 1 and obs.details["agents_lost"] == "slow"
    assert (obs.executions, obs.bad_executions, obs.escalations) == (2, 1, 1)
    assert "slow (not applied within 300s)" in obs.details["failed_applies"]


def test_silence_while_the_control_plane_was_down_is_not_a_lost_agent() -> None:
    hosts = [host("h")]
    agents = {"h": agent("h", T0)}
    later = T0 + 3600
    assert observe(hosts, agents, [], later, Timing(60, 300, alive_floor=0)).lost == 1
    assert observe(hosts, agents, [], later, Timing(60, 300, alive_floor=later - 10)).lost == 0
