"""kill -9 the agent at random points over many remediation cycles, with a control plane
connected: no double execution, no lost report.

One real ``stanch-cp`` and one real agent process (the fleet harness, one host) running a signed
bundle whose remediation appends the wall time to ``$HOME/sidefx`` before it fixes the fault.
The test breaks the host's app, kills the agent at a random moment (or lets a named failpoint end
it: right after the intent is committed, right after the steps ran), starts it again, and
repeats. Then one clean agent drains everything, and the recorded history is checked:

- **no double execution**: every line in ``sidefx`` belongs to exactly one execution (intent)
  committed before it; no intent ran its step twice (an interrupted one is never re-run);
- **no lost report**: every execution in the agent's journal is in the control plane's reports
  exactly once, with the journal's final status; the outbox is empty.

``STANCH_CRASH_SEED`` replays the kill points of a failed run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fleet_harness import TunedFleet, wait_for

from controlplane.storage.base import ReportQuery

LOOP_SECONDS = 70.0
TERMINAL = {"fixed", "not_fixed", "failed", "interrupted"}
STEP = 'date +%s.%N >> "$HOME/sidefx"; sleep 0.3; touch "$HOME/var/run/app.heartbeat"'

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


class KillRig(TunedFleet):
    """One host; its policy has no budget or breaker in the way of many cycles."""

    def __init__(self, work: Path) -> None:
        super().__init__(work, 1)
        self.host = self.host_ids[0]
        self.agent_extra = {"limits": {"max_runs_per_hour": 100_000}}
        self.guardrails = "{cooldown: 0s, budget: {max: 10000, per: 1h}, breaker: {after: 10000}}"

    @property
    def sidefx(self) -> Path:
        return self.work / self.host / "sidefx"

    def respawn(self, failpoint: str | None) -> None:
        """Start the host's agent again (with ``failpoint`` armed, if any)."""
        self.agent_env = {"STANCH_FAILPOINTS": failpoint} if failpoint else {}
        self.spawn_agent(self.host, "web")

    def kill_agent(self) -> None:
        proc = self.agents[self.host]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Steps run in their own session and outlive the agent: end them too (a real host
        # would let them finish; here a lingering one would only blur the timing).
        for p in psutil.process_iter(["cmdline"]):
            if any(str(self.sidefx) in arg for arg in p.info["cmdline"] or ()):
                with contextlib.suppress(psutil.Error, ProcessLookupError):
                    p.kill()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[KillRig]:
    r = KillRig(tmp_path)
    try:
        r.start()
        yield r
    finally:
        r.stop()


def test_kill9_agent_with_control_plane_no_double_execution_no_lost_report(rig: KillRig) -> None:
    host = rig.host
    digest = rig.release(STEP)
    rollout = rig.start_rollout(digest, "100%", "0s")
    watch = rig.watch_rollout(rollout, 60)
    out, _ = watch.communicate(timeout=90)
    assert watch.returncode == 0, out
    rig.wait_digest([host], digest, 30)

    seed = os.environ.get("STANCH_CRASH_SEED", str(time.time_ns()))
    print(f"agent kill loop seed {seed} (set STANCH_CRASH_SEED to replay the kill points)")
    rng = random.Random(seed)
    kinds: Counter[str] = Counter()
    rig.faulty.add(host)  # the harness's app no longer touches this host's heartbeat
    deadline = time.monotonic() + LOOP_SECONDS
    while time.monotonic() < deadline:
        kind = rng.choice(["kill", "kill", "kill", "crash_after_intent", "crash_after_steps"])
        if kind != "kill":
            rig.kill_agent()  # first: the running agent could fix the fault before it dies
            rig.respawn(kind)
            rig.break_app(host)  # after: a spawn touches the heartbeat
            proc = rig.agents[host]
            ends = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < ends:
                time.sleep(0.05)
            if proc.poll() is None:
                kind += " (not reached)"
        else:
            rig.break_app(host)
            time.sleep(rng.uniform(0.0, 3.5))
        kinds[kind] += 1
        rig.kill_agent()
        rig.respawn(None)
        time.sleep(rng.uniform(0.0, 1.0))  # sometimes killed again before it even connects

    # The app works again; one clean agent recovers the last kill and drains its outbox.
    rig.kill_agent()
    rig.heal(host)
    rig.respawn(None)

    def settled() -> bool:
        executions = rig.executions(host)
        return (
            bool(executions)
            and all(e.status in TERMINAL for e in executions)
            and not [r for r in rig.outbox(host) if r.kind == "execution"]
        )

    try:
        wait_for("every execution finished and its report acked", settled, 60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{rig.describe(host)}") from None

    executions = rig.executions(host)
    runs = [float(t) for t in rig.sidefx.read_text().split()] if rig.sidefx.exists() else []
    assert sum(kinds.values()) >= 12, kinds
    assert len(executions) >= 8, (kinds, len(executions))

    # no double execution: each step run belongs to one intent committed before it
    starts = [e.started_at for e in executions]
    owners: Counter[str] = Counter()
    for t in runs:
        before = [i for i, s in enumerate(starts) if s <= t]
        assert before, f"a step ran at {t} before any intent was recorded"
        owners[executions[before[-1]].id] += 1
    assert not {k: n for k, n in owners.items() if n > 1}, owners
    for e in executions:
        if e.status in ("fixed", "not_fixed", "failed"):
            assert owners[e.id] == 1, e

    # no lost report: each execution in the CP's reports exactly once, with its final status
    with rig.storage() as db:
        stored = db.reports(ReportQuery(host=host, kind="execution", limit=100_000))
    reported = Counter(json.loads(r.body_json)["id"] for r in stored)
    by_id = {json.loads(r.body_json)["id"]: r for r in stored}
    missing = [e.id for e in executions if reported[e.id] == 0]
    doubled = {i: n for i, n in reported.items() if n > 1}
    assert not missing, f"executions never reported: {missing}"
    assert not doubled, f"executions reported more than once: {doubled}"
    assert set(reported) == {e.id for e in executions}
    for e in executions:
        assert by_id[e.id].outcome == e.status, (e, by_id[e.id])
    interrupted = [e for e in executions if e.status == "interrupted"]
    assert interrupted, kinds  # the kills did land mid-remediation
    print(
        f"agent kill loop: {dict(kinds)}; {len(executions)} executions "
        f"({len(interrupted)} interrupted), {len(runs)} step runs, {len(stored)} reports"
    )
