"""Control-plane metrics in pieces, with a fresh CollectorRegistry per test: the flag, the rule
that prometheus_client loads only with it, gate transitions, bounded labels, the scrape-time
read of real storage, and the group-commit figures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from controlplane import server_config
from controlplane.gates import GateResult
from controlplane.ingest import ReportIngestor
from controlplane.instrumentation import NoMetrics, open_metrics
from controlplane.storage.base import Report, RolloutHost, RolloutRecord
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage

pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")
from prometheus_client import CollectorRegistry  # noqa: E402

from controlplane.metrics import (  # noqa: E402
    MAX_ACTIVE,
    MAX_VERSIONS,
    RECENT_FINISHED,
    ControlPlaneMetrics,
    PlaneSnapshot,
    RolloutView,
    StateCollector,
    _read_stored,
    bounded_versions,
)

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ["--db", "x.db", "--assignment-key", "k", "--trust", "t"]


def rollout(rid: str, state: str = "running", at: float = 1.0, **kw: object) -> RolloutRecord:
    base = RolloutRecord(
        id=rid,
        bundle_digest="ab" * 32,
        selector={"env": "prod"},
        waves=("1", "50%", "100%"),
        bake_seconds=60.0,
        gates={},
        gate_modes={},
        state=state,
        wave=0,
        wave_started_at=at,
        created_at=at,
        updated_at=at,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def gate(name: str, passed: bool, mode: str = "enforce", value: float = 0.0) -> GateResult:
    return GateResult(name, mode, "0", 0.0, value, passed)


# ---- the flag and the import rule ----------------------------------------------------------------


def test_metrics_listen_is_off_by_default_and_parsed_like_the_agents() -> None:
    parse = server_config.parser().parse_args
    assert parse(REQUIRED).metrics_listen is None
    assert parse([*REQUIRED, "--metrics-listen", "0.0.0.0:9465"]).metrics_listen == (
        "0.0.0.0",
        9465,
    )
    assert parse([*REQUIRED, "--metrics-listen", "[::1]:9465"]).metrics_listen == ("::1", 9465)
    assert isinstance(open_metrics(None), NoMetrics)


@pytest.mark.parametrize("bad", ["9465", "localhost", "::1:9465", "host:99999", "host:"])
def test_a_bad_metrics_listen_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        server_config.parser().parse_args([*REQUIRED, "--metrics-listen", bad])
    assert exit_.value.code == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_without_the_flag_prometheus_client_is_never_imported() -> None:
    probe = (
        "import sys, controlplane.server, controlplane.plane, controlplane.fleet_service;"
        "print('prometheus_client' in sys.modules, 'controlplane.metrics' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_every_part_of_the_plane_shares_one_instrument(tmp_path: Path) -> None:
    from agent.clock import FakeClock
    from controlplane.bundle_fixtures import KeyRing
    from controlplane.plane import ControlPlane

    trust = KeyRing.generate(1).trust(1)

    metrics = ControlPlaneMetrics(CollectorRegistry())
    plane = ControlPlane(
        SqliteStorage(tmp_path / "cp.db"),
        trust,
        lambda a: b"",
        FakeClock(),
        metrics=metrics,
    )
    parts = (plane.presence, plane.ingestor, plane.assigner, plane.engine)
    assert all(part.metrics is metrics for part in parts)
    assert plane.metrics is metrics
    plane.store.close()
    bare = ControlPlane(SqliteStorage(tmp_path / "b.db"), trust, lambda a: b"", FakeClock())
    assert isinstance(bare.metrics, NoMetrics) and bare.engine.metrics is bare.metrics
    bare.store.close()


# ---- events --------------------------------------------------------------------------------------


def test_a_gate_failure_counts_once_when_it_turns_failing() -> None:
    registry = CollectorRegistry()
    m = ControlPlaneMetrics(registry)

    def failures(name: str, mode: str = "enforce") -> float | None:
        return registry.get_sample_value(
            "stanch_cp_gate_failures_total", {"gate": name, "mode": mode}
        )

    assert failures("agents_lost") == 0 and failures("escalations", "observe") == 0
    fresh = rollout("r1")
    m.rollout_step(fresh, [gate("agents_lost", True), gate("escalations", False, "observe")])
    assert failures("escalations", "observe") == 1  # no earlier result: it turned failing now
    seen = rollout(
        "r1",
        gate_results=(
            gate("agents_lost", True).to_dict(),
            gate("escalations", False, "observe").to_dict(),
        ),
    )
    m.rollout_step(seen, [gate("agents_lost", False), gate("escalations", False, "observe")])
    assert failures("agents_lost") == 1
    assert failures("escalations", "observe") == 1  # still failing: not counted again


def test_rollbacks_assignments_and_storm_trips() -> None:
    registry = CollectorRegistry()
    m = ControlPlaneMetrics(registry)
    get = registry.get_sample_value
    m.rolled_back("rolled_back", 3, 1)
    m.rolled_back("aborted", 0, 0)
    m.assignments_issued("rollback", 3)
    m.assignments_issued("surprise", 1)  # an unknown kind is not a new label per caller
    m.storm_tripped(2)
    assert get("stanch_cp_rollbacks_total", {"state": "rolled_back"}) == 1
    assert get("stanch_cp_rollbacks_total", {"state": "aborted"}) == 1
    assert get("stanch_cp_rollback_hosts_total", {"result": "rolled_back"}) == 3
    assert get("stanch_cp_rollback_hosts_total", {"result": "stranded"}) == 1
    assert get("stanch_cp_assignments_issued_total", {"kind": "rollback"}) == 3
    assert get("stanch_cp_assignments_issued_total", {"kind": "join"}) == 0
    assert get("stanch_cp_assignments_issued_total", {"kind": "other"}) == 1
    assert get("stanch_cp_storm_trips_total") == 2


class SlowStorage(SqliteStorage):
    """A commit that takes until the test releases it, and that can be made to fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.fail = False

    def insert_reports(self, reports: Sequence[Report]) -> int:
        self.release.wait(10)
        if self.fail:
            raise OSError("disk full")
        return super().insert_reports(reports)


def batch(host: str, n: int) -> list[Report]:
    return [Report(host, i, "execution", "p", 1.0, "fixed", "", "{}") for i in range(n)]


def test_group_commits_are_counted_and_pending_reports_visible(tmp_path: Path) -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        m = ControlPlaneMetrics(registry)
        storage = SlowStorage(tmp_path / "cp.db")
        store = StorageThread(storage)
        ingestor = ReportIngestor(store, metrics=m)
        writer = asyncio.create_task(ingestor.run())
        first = asyncio.create_task(ingestor.submit(batch("h1", 3)))
        await asyncio.sleep(0.05)  # the writer took h1's batch into a commit; it hangs there
        second = asyncio.create_task(ingestor.submit(batch("h2", 2)))
        await asyncio.sleep(0.05)
        assert ingestor.pending_rows == 5  # 3 inside the stuck commit, 2 queued behind it
        storage.release.set()
        assert await asyncio.gather(first, second) == [3, 2]
        assert ingestor.pending_rows == 0
        assert await ingestor.submit(batch("h1", 3)) == 3  # redelivered: acked, not stored
        storage.fail = True
        with pytest.raises(OSError):
            await ingestor.submit(batch("h3", 4))
        writer.cancel()
        store.close()
        get = registry.get_sample_value
        assert get("stanch_cp_reports_received_total") == 12
        assert get("stanch_cp_reports_persisted_total") == 5
        assert get("stanch_cp_reports_duplicate_total") == 3
        assert get("stanch_cp_report_commit_failures_total") == 1
        assert get("stanch_cp_report_commit_rows_count") == 3  # successful commits only
        assert get("stanch_cp_report_commit_rows_sum") == 8
        assert get("stanch_cp_report_commit_seconds_count") == 4  # every commit
        assert get("stanch_cp_report_commit_seconds_sum") > 0.04

    asyncio.run(main())


# ---- state ---------------------------------------------------------------------------------------


def test_versions_are_bounded() -> None:
    versions = {f"1.{i}": 100 - i for i in range(MAX_VERSIONS + 5)}
    versions[""] = 500  # said nothing: "unknown", the most common here
    versions["x" * 500] = 1
    kept = bounded_versions(versions)
    assert len(kept) == MAX_VERSIONS + 1 and kept["unknown"] == 500
    # the 20 most common are kept by name (unknown and 1.0 to 1.18); the rest are "other"
    assert "1.18" in kept and "1.19" not in kept
    assert kept["other"] == sum(100 - i for i in range(MAX_VERSIONS - 1, MAX_VERSIONS + 5)) + 1
    assert sum(kept.values()) == sum(versions.values())
    assert all(len(v) <= 64 for v in kept)


def test_only_active_and_recent_rollouts_are_read_by_id(tmp_path: Path) -> None:
    db = SqliteStorage(tmp_path / "cp.db")
    for i in range(MAX_ACTIVE + 5):
        db.put_rollout(rollout(f"active-{i:02d}", "running", at=100.0 + i))
    for i in range(RECENT_FINISHED + 3):
        state = "completed" if i % 2 else "rolled_back"
        db.put_rollout(rollout(f"done-{i:02d}", state, at=float(i)))
    newest = f"active-{MAX_ACTIVE + 4:02d}"
    db.put_rollout_hosts(
        [
            RolloutHost(newest, "web-1", 0, "", 0, 1, 100.0, status="applied"),
            RolloutHost(newest, "web-2", 1, "", 0, 2, 100.0, status="failed"),
        ]
    )
    stored = _read_stored(db, 1000.0)
    ids = [v.record.id for v in stored.rollouts]
    assert len(ids) == MAX_ACTIVE + RECENT_FINISHED
    assert ids[:RECENT_FINISHED] == [f"done-{i:02d}" for i in range(3, RECENT_FINISHED + 3)]
    assert ids[-1] == newest and "active-00" not in ids  # the oldest active ones beyond the cap
    views = {v.record.id: v for v in stored.rollouts}
    assert views[newest].hosts == {"applied": 1, "failed": 1}
    assert views["done-07"].hosts == {}  # finished: not read
    assert stored.by_state == {
        "running": MAX_ACTIVE + 5,
        "paused": 0,
        "completed": 4,
        "rolled_back": 4,
        "aborted": 0,
    }
    db.close()


def collect(snap: PlaneSnapshot | Exception) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)

    def read() -> PlaneSnapshot:
        if isinstance(snap, Exception):
            raise snap
        return snap

    registry.register(StateCollector(read))
    return registry


def test_gates_and_hosts_are_shown_for_active_rollouts_only() -> None:
    results = (
        gate("failed_applies", True).to_dict(),
        gate("agents_lost", False, value=2).to_dict(),
    )
    active = rollout("web-v2-aaa", "paused", wave=1, gate_results=results)
    finished = rollout("web-v1-bbb", "rolled_back", gate_results=results)
    snap = PlaneSnapshot(
        connected=3,
        versions={"0.1.0": 3},
        rollouts=(RolloutView(active, {"applied": 2}), RolloutView(finished)),
        pauses={"operator": 1, "storm-breaker": 0},
        tasks={"report-writer": True, "rollouts": False},
    )
    get = collect(snap).get_sample_value
    assert get("stanch_cp_rollout_state", {"rollout": "web-v2-aaa", "state": "paused"}) == 1
    assert get("stanch_cp_rollout_state", {"rollout": "web-v2-aaa", "state": "running"}) == 0
    assert get("stanch_cp_rollout_state", {"rollout": "web-v1-bbb", "state": "rolled_back"}) == 1
    assert get("stanch_cp_rollout_wave", {"rollout": "web-v2-aaa"}) == 2
    assert get("stanch_cp_rollout_hosts", {"rollout": "web-v2-aaa", "status": "applied"}) == 2
    assert get("stanch_cp_rollout_hosts", {"rollout": "web-v2-aaa", "status": "stranded"}) == 0
    lost = {"rollout": "web-v2-aaa", "gate": "agents_lost", "mode": "enforce"}
    assert get("stanch_cp_rollout_gate_value", lost) == 2
    assert get("stanch_cp_rollout_gate_passing", lost) == 0
    assert get("stanch_cp_rollout_gate_value", {**lost, "rollout": "web-v1-bbb"}) is None
    assert get("stanch_cp_rollout_hosts", {"rollout": "web-v1-bbb", "status": "applied"}) is None
    assert get("stanch_cp_task_running", {"task": "rollouts"}) == 0
    assert get("stanch_cp_fleet_pauses_active", {"source": "operator"}) == 1
    assert get("stanch_cp_state_collect_success") == 1


def test_a_failed_read_still_answers_the_scrape() -> None:
    get = collect(TimeoutError()).get_sample_value
    assert get("stanch_cp_state_collect_success") == 0
    assert get("stanch_cp_agents_connected") is None
    assert get("stanch_cp_state_collect_duration_seconds") is not None
