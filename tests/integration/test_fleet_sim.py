"""The fleet simulator against a real ``stanch-cp`` process: a 50-agent smoke run of every
benchmark path (connect, a rollout in 4 waves with zero bake, durable reports, a restart), so the
simulator and ``bench/cp_bench.py`` do not rot between benchmark runs."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from fleet_sim import Fleet  # noqa: E402
from fleet_sim_agent import SATURATE  # noqa: E402
from fleet_sim_cp import ControlPlaneProcess  # noqa: E402

AGENTS = 50


def _rollout_done(cp: ControlPlaneProcess, rollout_id: str) -> bool:
    status = cp.rollout(rollout_id)
    return status.state == "completed" and sum(w.applied for w in status.waves) == AGENTS


def test_fleet_sim_smoke(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path, flags=("--tick", "200ms"))
    cp.start()
    fleet = Fleet(cp.addr, AGENTS, processes=2, heartbeat=0.5, report_batch=5, backoff_max=2.0)
    try:
        fleet.start()
        fleet.wait(lambda t: t["connected"] == AGENTS, 60, "every agent connected")
        assert cp.connected_agents() == AGENTS
        fleet.wait(lambda t: t["heartbeats"] >= 2 * AGENTS, 20, "heartbeats")

        digest = cp.publish()
        rollout = cp.start_rollout(digest, ("10%", "25%", "50%", "100%"), bake=0.0)
        fleet.wait(lambda t: t["applied"] == AGENTS, 60, "every agent applied")
        done = _wait(lambda: _rollout_done(cp, rollout.id), 30)
        assert done, f"rollout not completed: {cp.rollout(rollout.id)}"
        assert fleet.totals()["fetches"] == 2  # once per digest per worker process

        fleet.set_report_rate(SATURATE)
        fleet.wait(lambda t: t["reports_acked"] >= 2_000, 60, "2,000 reports acked")
        fleet.set_report_rate(0.0)
        fleet.wait(lambda t: t["reports_sent"] == t["reports_acked"], 30, "every report acked")
        acked = fleet.totals()["reports_acked"]

        cp.terminate()
        fleet.wait(lambda t: t["connected"] == 0, 30, "every stream ended with the process")
        cp.start()
        fleet.wait(lambda t: t["connected"] == AGENTS, 60, "every agent back after the restart")
        assert cp.connected_agents() == AGENTS
        totals = fleet.totals()
        assert totals["disconnects"] == AGENTS and totals["errors"] == 0
    finally:
        fleet.stop()
        cp.terminate()
    with sqlite3.connect(tmp_path / "cp.db") as db:
        stored = db.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
        applied = db.execute(
            "SELECT COUNT(*) FROM agents WHERE bundle_digest = ?", (digest,)
        ).fetchone()[0]
    assert stored == acked  # acked means durable, and nothing else was stored
    assert applied == AGENTS


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_fleet_sim_over_mtls(tmp_path: Path) -> None:
    """With ``--pki-dir`` each simulated agent has its own host certificate; the control plane
    takes the host id from it, and a rollout reaches every agent over mTLS."""
    cp = ControlPlaneProcess(tmp_path, tls=True, flags=("--tick", "200ms"))
    cp.start()
    fleet = Fleet(cp.addr, 20, processes=2, heartbeat=0.5, pki_dir=str(cp.pki_dir))
    try:
        fleet.start()
        fleet.wait(lambda t: t["connected"] == 20, 60, "every agent connected over mTLS")
        assert cp.connected_agents() == 20
        rollout = cp.start_rollout(cp.publish(), ("10%", "25%", "50%", "100%"), bake=0.0)
        fleet.wait(lambda t: t["applied"] == 20, 60, "every agent applied")
        assert _wait(lambda: cp.rollout(rollout.id).state == "completed", 30)
        assert fleet.totals()["errors"] == 0
    finally:
        fleet.stop()
        cp.terminate()
