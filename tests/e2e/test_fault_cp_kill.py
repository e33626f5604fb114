"""kill -9 the control plane again and again during one rollout: it resumes from storage and
finishes, and the fleet ends where a rollout without crashes would have left it.

A real ``stanch-cp`` on SQLite and eight real agents (the fleet harness). A four-wave rollout
starts; the control plane is SIGKILLed at random moments (while it assigns a wave, while a wave
bakes, between), left down for a random while and started again on the same address and
database, several times. A fault on one host while it is down is fixed locally and reported
once after the restart. Then:

- the rollout completes with every wave passed, the waves as the stable hash ranking says;
- each host got exactly one new assignment, for this rollout, with a higher sequence than any
  before, applied, and its agent holds that sequence (none assigned twice, none backwards, no
  rejection: no agent was ever sent a stale or repeated sequence);
- a wave was assigned only after every host of the one before it had applied.

(``test_fleet_e2e.py`` has the slow 22-host story with one kill; this is its fault-suite form:
smaller, more kills, random points. ``STANCH_CRASH_SEED`` replays them.)
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from fleet_harness import FIX, TunedFleet, wait_for

from agent.journal import ExecutionRow
from controlplane.storage.base import ReportQuery
from controlplane.waves import assign_waves, parse_waves

HOSTS = 8
WAVES = "1,25%,50%,100%"
KILLS = 3
BAKE = "5s"

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def fixes(fleet: TunedFleet, host: str, since: float) -> list[ExecutionRow]:
    return [e for e in fleet.executions(host) if e.started_at >= since and e.status == "fixed"]


def drained(fleet: TunedFleet, host: str) -> bool:
    return not fleet.outbox(host)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[TunedFleet]:
    f = TunedFleet(tmp_path, HOSTS)
    try:
        f.start()
        yield f
    finally:
        f.stop()


def test_control_plane_killed_repeatedly_mid_rollout_resumes_and_finishes(
    fleet: TunedFleet,
) -> None:
    hosts = fleet.host_ids
    fleet.baseline()
    before = fleet.assignments()
    started = time.time()
    seed = os.environ.get("STANCH_CRASH_SEED", str(time.time_ns()))
    print(f"control-plane kill seed {seed} (set STANCH_CRASH_SEED to replay)")
    rng = random.Random(seed)

    digest = fleet.release(FIX)
    rollout = fleet.start_rollout(digest, WAVES, BAKE)
    expected = assign_waves(rollout, parse_waves([WAVES]), hosts)
    kills: list[tuple[float, int, int]] = []  # (at, wave, hosts updated)
    fixed_while_down: dict[str, str] = {}
    for n in range(KILLS):
        time.sleep(rng.uniform(0.2, 3.0))
        if fleet.status(rollout)["state"] != "running":
            break
        wave = int(fleet.status(rollout)["wave"])
        fleet.kill_cp()
        killed = time.time()
        kills.append((killed, wave, sum(1 for h in hosts if fleet.digest(h) == digest)))
        if n == 0:  # one host hits a fault while the control plane is down: fixed alone
            host = hosts[-1]
            fleet.break_app(host)
            run = wait_for(
                "a fix while the control plane is down", partial(fixes, fleet, host, killed), 30
            )[0]
            fixed_while_down[host] = run.id
            fleet.heal(host)
        time.sleep(rng.uniform(0.0, 3.0))  # down across bake deadlines, sometimes
        assert fleet.cp is not None and fleet.cp.poll() is not None
        fleet.restart_cp()

    watch = fleet.watch_rollout(rollout, 120)
    out, _ = watch.communicate(timeout=150)
    assert watch.returncode == 0, f"the rollout did not finish after {len(kills)} kills:\n{out}"
    assert len(kills) >= 2, f"the rollout ended after {len(kills)} kill(s)"
    fleet.wait_digest(hosts, digest, 60)

    status = fleet.status(rollout)
    assert status["state"] == "completed" and status["updated"] == len(hosts)
    assert [w["state"] for w in status["waves"]] == ["passed"] * 4
    with fleet.storage() as db:
        rows = {r.host_id: r for r in db.rollout_hosts(rollout)}
        rejections = db.reports(ReportQuery(kind="rejection", since=started, limit=1000))
        reports = db.reports(ReportQuery(kind="execution", since=started, limit=10_000))
    assert {h: r.wave for h, r in rows.items()} == expected
    assert {r.status for r in rows.values()} == {"applied"}
    for k in range(1, 4):
        members = [r for h, r in rows.items() if expected[h] == k]
        previous = [r for h, r in rows.items() if expected[h] == k - 1]
        if members and previous:
            assert min(r.assigned_at for r in members) >= max(r.applied_at for r in previous)
    after = fleet.assignments()
    for h in hosts:
        old = before.get(h, [])
        new = after[h][len(old) :]
        assert [(r["rollout_id"], r["status"]) for r in new] == [(rollout, "applied")], h
        assert new[0]["seq"] > (old[-1]["seq"] if old else 0), h
        assert fleet.agent_state(h)["assignment_seq"] == new[0]["seq"], h
    assert rejections == []

    for host, execution in fixed_while_down.items():
        wait_for("the fix made while down to be delivered", partial(drained, fleet, host), 30)
        with fleet.storage() as db:
            stored = db.reports(ReportQuery(host=host, kind="execution", limit=10_000))
        ids = Counter(json.loads(r.body_json)["id"] for r in stored)
        assert ids[execution] == 1, ids
    print(f"control plane killed {len(kills)} times (at wave, hosts updated): "
          f"{[(w, u) for _, w, u in kills]}; {len(reports)} execution reports")  # fmt: skip
