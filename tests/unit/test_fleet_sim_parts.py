"""The fleet simulator's pure parts: how agents are split over processes, their labels, and the
profile summary ``cp_bench`` prints (the live paths are in tests/integration/test_fleet_sim.py)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from cp_bench import hot_spots  # noqa: E402
from fleet_sim import Fleet  # noqa: E402
from fleet_sim_agent import SimConfig  # noqa: E402


def test_agents_are_split_contiguously_over_processes() -> None:
    configs = Fleet("127.0.0.1:1", 10_001, processes=3, heartbeat=5.0).configs()
    assert [c.agents for c in configs] == [3_334, 3_334, 3_333]
    assert [c.first for c in configs] == [0, 3_334, 6_668]
    assert all(c.heartbeat == 5.0 and c.address == "127.0.0.1:1" for c in configs)


def test_never_more_processes_than_agents() -> None:
    configs = Fleet("127.0.0.1:1", 2, processes=8).configs()
    assert [(c.agents, c.first) for c in configs] == [(1, 0), (1, 1)]


def test_labels_spread_over_zones_and_roles() -> None:
    config = SimConfig("127.0.0.1:1", 12)
    labels = [config.labels(i) for i in range(12)]
    assert {lab["zone"] for lab in labels} == {"z0", "z1", "z2", "z3"}
    assert {lab["role"] for lab in labels} == {"web", "db", "cache"}
    assert all(lab["env"] == "prod" for lab in labels)
    assert labels[5] == {"env": "prod", "zone": "z1", "role": "cache"}


def test_hot_spots_counts_each_project_frame_once_per_stack(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "<module> (controlplane/server.py:10);main (controlplane/server.py:5);"
        "Connect (controlplane/fleet_service.py:40);_tx (agent/sqlite_db.py:90) 30\n"
        "<module> (controlplane/server.py:10);select (selectors.py:468) 60\n"
        "_read (controlplane/fleet_service.py:99);_read (controlplane/fleet_service.py:101) 10\n"
    )
    spots = dict(hot_spots(raw))
    assert spots == {
        "Connect controlplane/fleet_service.py": 30.0,
        "_tx agent/sqlite_db.py": 30.0,
        "_read controlplane/fleet_service.py": 10.0,
    }
