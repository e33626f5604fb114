"""Issue 5's acceptance, end to end: a real ``stanch-cp`` process on SQLite and 22 real agent
processes (``python -m agent.cli run``), real gRPC on loopback, driven with ``opsctl`` as an
operator would, and checked on real state: ``opsctl -o json``, each agent's active bundle
pointer, pause file, journal and outbox, and the control plane's database.

One fleet serves the whole module (starting 22 agents is the expensive part); each test starts
from "control plane up, every host on a good bundle, no fault", which the ``fleet`` fixture and
``Fleet.baseline`` restore, so any test also runs alone (``-k``). The order below is the order of
the story: waves, a bad bundle, a crash, a replay, the kill switch, a storm.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from fleet_harness import BREAK, FIX, POLICY, Fleet, ReplayServer, wait_for

from agent.journal import ExecutionRow
from controlplane.storage.base import ReportQuery
from controlplane.waves import assign_waves, parse_waves

HOSTS = 22
WAVES = "1,25%,100%"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), HOSTS)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def fleet(processes: Fleet) -> Iterator[Fleet]:
    """The module's fleet, with the control plane up and no fault injected."""
    processes.ensure_cp()
    processes.heal_all()
    assert not processes.dead_agents(), f"agent processes died: {processes.dead_agents()}"
    yield processes
    processes.heal_all()
    assert not processes.dead_agents(), f"agent processes died: {processes.dead_agents()}"


def expected_waves(rollout_id: str, hosts: list[str]) -> dict[str, int]:
    return assign_waves(rollout_id, parse_waves([WAVES]), hosts)


def wait_host(
    fleet: Fleet, host: str, what: str, predicate: Callable[[], Any], timeout: float
) -> Any:
    try:
        return wait_for(what, predicate, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{fleet.describe(host)}") from None


def pick(fleet: Fleet, skip: set[str] | None = None) -> str:
    """A host whose remediations all worked so far (none failed, no breaker to trip over)."""
    for host in fleet.host_ids:
        if host in (skip or set()) or host in fleet.faulty:
            continue
        if all(e.status == "fixed" for e in fleet.executions(host)):
            return host
    raise AssertionError("no healthy host left to break")


def fixes_since(fleet: Fleet, host: str, since: float) -> list[ExecutionRow]:
    return [e for e in fleet.executions(host) if e.status == "fixed" and e.started_at >= since]


def watch_to_end(fleet: Fleet, rollout_id: str, timeout: float = 150) -> tuple[int, str]:
    watch = fleet.watch_rollout(rollout_id, timeout)
    try:
        out, _ = watch.communicate(timeout=timeout + 30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)
    return watch.returncode, out


# ---- 1. waves ----------------------------------------------------------------------------------


def test_a_rollout_across_22_agent_processes_goes_in_waves(fleet: Fleet) -> None:
    hosts = fleet.host_ids
    assert len(hosts) >= 20
    digest = fleet.release(FIX)
    rollout = fleet.start_rollout(digest, WAVES, "2s")

    code, out = watch_to_end(fleet, rollout)

    assert code == 0, f"rollout status --watch exited {code}:\n{out}"
    fleet.wait_digest(hosts, digest, 30)  # every host's own active pointer
    fleet.good = digest
    status = fleet.status(rollout)
    assert status["state"] == "completed" and status["updated"] == len(hosts)
    waves = status["waves"]
    assert [w["state"] for w in waves] == ["passed"] * 3
    assert [w["target"] for w in waves] == [1, 6, 22]  # cumulative: 1, 25% of 22, all
    assert [w["assigned"] for w in waves] == [1, 5, 16]
    assert [w["applied"] for w in waves] == [1, 5, 16]
    expected = expected_waves(rollout, hosts)
    with fleet.storage() as db:
        rows = {r.host_id: r for r in db.rollout_hosts(rollout)}
        stored = db.rollout(rollout)
    assert stored is not None
    assert {h: r.wave for h, r in rows.items()} == expected  # the stable hash ranking
    assert {r.status for r in rows.values()} == {"applied"}
    first = {k: min(r.assigned_at for h, r in rows.items() if expected[h] == k) for k in range(3)}
    for k in (1, 2):
        # a wave is assigned only once every host of the one before it has applied...
        before = [r.applied_at for h, r in rows.items() if expected[h] == k - 1]
        assert first[k] >= max(before)
    # ... and it has baked for 2 s: the canary from the rollout's start, wave 2 from the step
    # that assigned it (a few ms before its first assignment) to the start of wave 3 (stored)
    assert first[1] >= stored.created_at + 2.0
    assert stored.wave == 2 and first[1] + 2.0 - 0.25 <= stored.wave_started_at <= first[2]
    # and the hosts themselves activated the bundle in that order (their pointers' timestamps)
    activated = {h: p.activated_at for h in hosts if (p := fleet.pointer(h)) is not None}
    for k in (1, 2):
        assert max(activated[h] for h, w in expected.items() if w == k - 1) < min(
            activated[h] for h, w in expected.items() if w == k
        )
    listed = fleet.agents_json()
    assert all(listed[h]["connected"] and listed[h]["bundle_digest"] == digest for h in hosts)


# ---- 2. a bad bundle ---------------------------------------------------------------------------


def test_a_bad_bundle_is_halted_at_the_canary_and_rolled_back_on_the_host(fleet: Fleet) -> None:
    good = fleet.baseline()
    hosts = fleet.host_ids
    before = fleet.assignments()
    bad = fleet.release(BREAK)  # its remediation fails wherever the fault shows up
    rollout = fleet.start_rollout(bad, WAVES, "60s")
    canary = expected_waves(rollout, hosts)
    (first,) = [h for h, w in canary.items() if w == 0]
    watch = fleet.watch_rollout(rollout, 120)
    try:
        running = wait_for(
            "the canary to run the bad bundle",
            lambda: [h for h in hosts if fleet.digest(h) == bad],
            60,
        )
        assert running == [first]
        fleet.break_app(first)  # a fault on the canary, which the bad bundle cannot fix
        out, _ = watch.communicate(timeout=150)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)

    assert watch.returncode == 1, f"rollout status --watch exited {watch.returncode}:\n{out}"
    status = fleet.status(rollout)
    assert status["state"] == "rolled_back"
    assert "failure_rate" in status["reason"] and first in status["reason"]
    assert [w["assigned"] for w in status["waves"]] == [1, 0, 0]
    assert status["rolled_back"] == 1
    # rolled back on the canary itself, by a newer assignment to the previous bundle
    fleet.wait_digest([first], good, 60)
    pointer = fleet.pointer(first)
    assert pointer is not None and bad in pointer.history  # it really ran the bad one
    assert any(e.status == "failed" for e in fleet.executions(first))

    def canary_rows() -> list[Any]:
        rows = fleet.assignments()[first][len(before.get(first, [])) :]
        return rows if [r["status"] for r in rows] == ["applied", "applied"] else []

    rows = wait_for("the rollback applied on the canary", canary_rows, 30)
    assert [r["bundle_digest"] for r in rows] == [bad, good]
    assert rows[1]["seq"] > rows[0]["seq"] and rows[1]["rollout_id"] == rollout
    # blast radius: nobody outside wave 1 was ever assigned it, fetched it or ran it
    after = fleet.assignments()
    assert {h for h, rs in after.items() if any(r["bundle_digest"] == bad for r in rs)} == {first}
    for host in hosts:
        if host == first:
            continue
        pointer = fleet.pointer(host)
        assert pointer is not None and pointer.digest == good, host
        assert bad not in pointer.history, host
        assert not (fleet.state(host) / "bundles" / bad).exists(), host
    with fleet.storage() as db:
        tracked = [(r.host_id, r.status) for r in db.rollout_hosts(rollout)]
    assert tracked == [(first, "rolled_back")]
    escalations = fleet.ctl_json("escalations", "list", "--since", "10m")
    assert [e for e in escalations if e["source"] == "rollout" and rollout in e["message"]]
    # the canary's fault is still there: the bundle it got back fixes it
    restored = pointer.activated_at
    wait_host(
        fleet,
        first,
        "the restored bundle to fix the canary's fault",
        lambda: fixes_since(fleet, first, restored),
        30,
    )


# ---- 3 and 4. the control plane killed mid-rollout ---------------------------------------------


def test_control_plane_killed_mid_rollout_resumes_and_agents_carry_on(fleet: Fleet) -> None:
    """SIGKILL while wave 2 bakes. While it is down a host hits a fault and its agent fixes it
    alone; the restarted control plane finishes the rollout from storage (no host assigned
    twice or backwards) and gets the reports made meanwhile exactly once."""
    fleet.baseline()
    hosts = fleet.host_ids
    before = fleet.assignments()
    started = time.time()
    digest = fleet.release(FIX)
    rollout = fleet.start_rollout(digest, WAVES, "5s")
    expected = expected_waves(rollout, hosts)

    def wave_two_baking() -> bool:
        s = fleet.status(rollout)
        return bool(s["state"] == "running" and s["wave"] == 1 and s["waves"][1]["applied"] >= 1)

    wait_for("wave 2 to be under way", wave_two_baking, 60)
    fleet.kill_cp()
    killed = time.time()
    assert fleet.ctl("agents", "list", must=False).returncode == 2  # unreachable
    updated = {h for h in hosts if fleet.digest(h) == digest}
    assert {h for h, w in expected.items() if w == 0} < updated
    assert len(updated) <= 6  # wave 3 was never assigned

    host = pick(fleet, skip=updated)
    fleet.break_app(host)
    fixed = wait_host(
        fleet,
        host,
        "the agent to fix a fault while the control plane is down",
        lambda: fixes_since(fleet, host, killed),
        30,
    )[0]
    fleet.heal(host)
    assert fleet.cp is not None and fleet.cp.poll() is not None  # down all along
    waiting = fleet.outbox(host)
    execution_reports = [
        r for r in waiting if r.kind == "execution" and json.loads(r.body)["id"] == fixed.id
    ]
    assert len(execution_reports) == 1 and execution_reports[0].outcome == "fixed"
    time.sleep(max(0.0, killed + 6 - time.time()))  # down for longer than the bake

    fleet.restart_cp()
    code, out = watch_to_end(fleet, rollout)

    assert code == 0, f"the rollout did not complete after the restart:\n{out}"
    fleet.wait_digest(hosts, digest, 60)
    status = fleet.status(rollout)
    assert [w["state"] for w in status["waves"]] == ["passed"] * 3
    assert [w["assigned"] for w in status["waves"]] == [1, 5, 16]
    with fleet.storage() as db:
        rows = {r.host_id: r for r in db.rollout_hosts(rollout)}
        rejections = db.reports(ReportQuery(kind="rejection", since=started, limit=1000))
    assert {h: r.wave for h, r in rows.items()} == expected  # same waves after the restart
    assert {r.status for r in rows.values()} == {"applied"}
    after = fleet.assignments()
    for h in hosts:
        old = before.get(h, [])
        new = after[h][len(old) :]
        assert [(r["rollout_id"], r["status"]) for r in new] == [(rollout, "applied")], h
        assert new[0]["seq"] > (old[-1]["seq"] if old else 0), h
        assert fleet.agent_state(h)["assignment_seq"] == new[0]["seq"], h
    assert rejections == []  # no agent was ever sent a stale or duplicate sequence

    # the reports made while it was down: delivered (the outbox drains), each stored once
    ids = {r.id for r in waiting}
    wait_host(
        fleet,
        host,
        "the outbox to drain",
        lambda: not ids & {r.id for r in fleet.outbox(host)},
        30,
    )
    with fleet.storage() as db:
        stored = db.reports(ReportQuery(host=host, limit=10_000))
    counts = Counter(r.id for r in stored)
    assert all(counts[i] == 1 for i in ids), {i: counts[i] for i in ids}
    by_id = {r.id: r for r in stored}
    for r in waiting:
        assert (by_id[r.id].kind, by_id[r.id].outcome) == (r.kind, r.outcome)
        assert json.loads(by_id[r.id].body_json) == json.loads(r.body)
    runs = [
        r for r in stored if r.kind == "execution" and json.loads(r.body_json)["id"] == fixed.id
    ]
    assert len(runs) == 1 and runs[0].outcome == "fixed" and killed <= runs[0].at


# ---- 5. a replayed assignment ------------------------------------------------------------------


def test_a_replayed_older_assignment_is_refused_and_the_bundle_kept(fleet: Fleet) -> None:
    """An attacker who captured an older signed assignment (here: from the control plane's own
    database) and stands in for the control plane replays it; the agent refuses it."""
    fleet.baseline()

    def older(history: dict[str, list[Any]], host: str) -> list[Any]:
        """Assignments before the newest that point at another bundle than the active one."""
        return [r for r in history.get(host, [])[:-1] if r["bundle_digest"] != fleet.digest(host)]

    history = fleet.assignments()
    if not any(older(history, h) for h in fleet.host_ids):  # run alone: make some history
        fleet.good = ""
        fleet.baseline()
        history = fleet.assignments()
    targets = sorted(
        (h for h in fleet.host_ids if older(history, h)), key=lambda h: -len(history[h])
    )[:2]  # the canary of the bad rollout (if it ran) has the longest history
    captured = {h: older(history, h)[-1] for h in targets}
    kept = {h: (fleet.pointer(h), fleet.agent_state(h)["assignment_seq"]) for h in targets}
    for h in targets:
        assert captured[h]["seq"] < kept[h][1]

    fleet.stop_cp()
    with ReplayServer(fleet.port, {h: bytes(captured[h]["envelope"]) for h in targets}) as fake:
        for h in targets:
            result = wait_host(fleet, h, f"{h} to answer the replay", partial(fake.result, h), 30)
            assert not result.applied and result.reason == "replayed", result
            assert result.assignment_seq == captured[h]["seq"]
            assert result.bundle_digest == captured[h]["bundle_digest"]
            assert fleet.pointer(h) == kept[h][0]  # same bundle, not even re-activated
            assert fleet.agent_state(h)["assignment_seq"] == kept[h][1]
            assert [r for r in fleet.outbox(h) if r.kind == "rejection" and r.reason == "replayed"]
    fleet.restart_cp()

    def delivered(host: str) -> bool:
        return not [r for r in fleet.outbox(host) if r.kind == "rejection"]

    for h in targets:
        wait_host(fleet, h, "the refusal to reach the control plane", partial(delivered, h), 30)
        with fleet.storage() as db:
            refused = db.reports(ReportQuery(host=h, kind="rejection", limit=1000))
        assert [(r.reason, json.loads(r.body_json)["seq"]) for r in refused] == [
            ("replayed", captured[h]["seq"])
        ]
        assert fleet.pointer(h) == kept[h][0]


# ---- 6. the kill switch ------------------------------------------------------------------------


def test_the_central_kill_switch_reaches_every_agent_within_seconds(fleet: Fleet) -> None:
    fleet.baseline()
    hosts = fleet.host_ids
    host = pick(fleet)
    asked = time.monotonic()
    reply = fleet.ctl_json("pause", "--policy", POLICY, "--for", "10m", "--reason", "e2e incident")
    try:
        assert reply["reached"] == len(hosts)
        wait_for(
            "the pause in every host's pause file",
            lambda: all(POLICY in fleet.pauses(h) for h in hosts),
            10,
        )
        assert time.monotonic() - asked < 10
        for h in hosts:
            pause = fleet.pauses(h)[POLICY]
            assert pause.by == "control-plane" and "e2e incident" in pause.reason
            assert pause.until is not None and abs(pause.until - (time.time() + 600)) < 30

        paused = time.time()
        fleet.break_app(host)
        wait_host(
            fleet,
            host,
            "the agent to suppress the fix (paused)",
            lambda: [
                d
                for d in fleet.decisions(host)
                if (d.outcome, d.reason) == ("suppressed", "paused") and d.last_at >= paused
            ],
            20,
        )
        time.sleep(2)  # a few more check intervals
        assert not [e for e in fleet.executions(host) if e.started_at >= paused]
    finally:
        resumed = fleet.ctl_json("resume", "--policy", POLICY)
    assert resumed["reached"] == len(hosts)
    wait_for(
        "the pause lifted on every host",
        lambda: not any(POLICY in fleet.pauses(h) for h in hosts),
        10,
    )
    wait_host(fleet, host, "the fix once resumed", lambda: fixes_since(fleet, host, paused), 30)


# ---- 7. the storm breaker ----------------------------------------------------------------------


def test_the_fleet_storm_breaker_pauses_a_policy_firing_on_most_hosts(fleet: Fleet) -> None:
    fleet.baseline()
    hosts = fleet.host_ids
    since = time.time()
    stormy = hosts[: len(hosts) * 3 // 4]  # 16 of 22, above the 50% the control plane allows
    try:
        for h in stormy:
            fleet.break_app(h)
        wait_for(
            "the storm pause in every host's pause file",
            lambda: all(POLICY in fleet.pauses(h) for h in hosts),
            30,
        )
        for h in hosts:
            pause = fleet.pauses(h)[POLICY]
            assert pause.by == "control-plane" and "storm-breaker" in pause.reason, pause
            assert pause.until is not None and pause.until > time.time() + 600
        escalations = [
            e
            for e in fleet.ctl_json("escalations", "list", "--since", "10m")
            if e["source"] == "storm-breaker" and e["at"] >= since
        ]
        assert len(escalations) == 1 and escalations[0]["policy"] == POLICY
        message = escalations[0]["message"]
        assert "fleet storm" in message and f"of {len(hosts)} hosts" in message
        firing = int(message.split(" fired on ")[1].split()[0])
        assert len(hosts) / 2 < firing <= len(stormy)
        pauses = fleet.ctl_json("pauses", "list")
        assert [p["by"] for p in pauses if p["scope"] == POLICY] == ["storm-breaker"]
    finally:
        fleet.ctl("resume", "--policy", POLICY, must=False)
        fleet.heal_all()
    wait_for(
        "the storm pause lifted on every host",
        lambda: not any(POLICY in fleet.pauses(h) for h in hosts),
        10,
    )
