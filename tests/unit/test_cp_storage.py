"""SqliteStorage: schema versions, exactly-once reports, sequence numbers, atomic bookkeeping."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controlplane.storage.base import (
    AgentRecord,
    AssignmentPayload,
    AssignmentRequest,
    Report,
    ReportQuery,
    RolloutHost,
)
from controlplane.storage.schema import MIGRATIONS, SchemaError
from controlplane.storage.sqlite import SqliteStorage


@pytest.fixture
def db(tmp_path: Path) -> SqliteStorage:
    return SqliteStorage(tmp_path / "cp.db")


def sign(payload: AssignmentPayload) -> bytes:
    return f"{payload.host_id}:{payload.seq}:{payload.bundle_digest}".encode()


def test_a_new_file_is_at_the_latest_schema_in_wal_with_full_sync(db: SqliteStorage) -> None:
    assert db.schema_version() == len(MIGRATIONS)
    raw = sqlite3.connect(db.path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_a_file_from_a_newer_control_plane_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(SchemaError, match="newer than this control plane"):
        SqliteStorage(path)


def test_an_older_file_is_backed_up_before_upgrading(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    SqliteStorage(path).close()
    upgraded = SqliteStorage(path, (*MIGRATIONS, "CREATE TABLE extra (x INTEGER)"))
    assert upgraded.schema_version() == len(MIGRATIONS) + 1
    backup = tmp_path / f"cp.db.v{len(MIGRATIONS)}.bak"
    assert sqlite3.connect(backup).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_reports_are_stored_once_per_host_and_id(db: SqliteStorage) -> None:
    batch = [Report("h1", i, "execution", "p", 100.0 + i, "fixed", "", "{}") for i in (1, 2)]
    assert db.insert_reports(batch) == 2
    other_host = [Report("h2", 1, "execution", "p", 101.0, "failed", "", "{}")]
    assert db.insert_reports([*batch, *other_host]) == 1
    assert [(r.host_id, r.id) for r in db.reports(ReportQuery())] == [
        ("h1", 2),
        ("h2", 1),
        ("h1", 1),
    ]
    assert [r.id for r in db.reports(ReportQuery(host="h1", since=101.5))] == [2]
    assert [r.host_id for r in db.reports(ReportQuery(hosts=("h2",)))] == ["h2"]
    assert db.prune_reports(before=101.5) == 2  # retention: h1/1 and h2/1
    assert [(r.host_id, r.id) for r in db.reports(ReportQuery())] == [("h1", 2)]


def test_sequences_rise_per_host_and_above_what_the_agent_reported(db: SqliteStorage) -> None:
    db.upsert_agent(AgentRecord("h1", {}, last_assignment_seq=41))
    first = db.issue_assignments([AssignmentRequest("h1", "d1", 1, "r")], 10.0, sign)
    second = db.issue_assignments(
        [AssignmentRequest("h1", "d2", 2, "r"), AssignmentRequest("h2", "d2", 2, "r")], 11.0, sign
    )
    assert [a.seq for a in first] == [42]  # a restored database never goes below the agent
    assert [(a.host_id, a.seq) for a in second] == [("h1", 43), ("h2", 1)]
    assert second[0].envelope == b"h1:43:d2"
    assert db.current_assignment("h1") == second[0]
    assert set(db.current_assignments()) == {"h1", "h2"}


def test_an_assignment_and_its_rollout_row_are_one_transaction(db: SqliteStorage) -> None:
    track = RolloutHost("r", "h1", 0, "d1", 1, 0, 10.0)

    def broken(_: AssignmentPayload) -> bytes:
        raise RuntimeError("signer down")

    with pytest.raises(RuntimeError):
        db.issue_assignments([AssignmentRequest("h1", "d2", 2, "r", track)], 10.0, broken)
    assert db.current_assignment("h1") is None and db.rollout_host("r", "h1") is None
    (issued,) = db.issue_assignments([AssignmentRequest("h1", "d2", 2, "r", track)], 10.0, sign)
    row = db.rollout_host("r", "h1")
    assert row is not None and row.seq == issued.seq and row.previous_digest == "d1"


def test_apply_results_update_the_assignment_and_the_agent(db: SqliteStorage) -> None:
    db.upsert_agent(AgentRecord("h1", {"env": "prod"}, bundle_digest="d1", bundle_version=1))
    (a,) = db.issue_assignments([AssignmentRequest("h1", "d2", 2, "r")], 1.0, sign)
    assert db.record_apply("h1", a.seq + 1, "d2", True, "", 2.0) is None
    done = db.record_apply("h1", a.seq, "d2", True, "", 2.0)
    assert done is not None and done.status == "applied"
    agent = db.agent("h1")
    assert agent is not None and (agent.bundle_digest, agent.bundle_version) == ("d2", 2)
    assert agent.last_assignment_seq == a.seq


def test_pauses_expire_and_clear_by_scope_and_selector(db: SqliteStorage) -> None:
    db.add_pause("nginx", {}, 100.0, "r", "me", 1.0)
    db.add_pause("*", {"role": "db"}, 0.0, "r", "me", 1.0)
    assert {p.scope for p in db.pauses(50.0)} == {"nginx", "*"}
    assert {p.scope for p in db.pauses(150.0)} == {"*"}  # TTL passed
    assert db.clear_pauses("*", {}) == []
    assert [p.scope for p in db.clear_pauses("*", {"role": "db"})] == ["*"]
    assert db.pauses(50.0)[0].scope == "nginx"


def test_a_lease_is_held_until_it_expires(db: SqliteStorage) -> None:
    assert db.acquire_lease("driver", "a", 10.0, 100.0)
    assert not db.acquire_lease("driver", "b", 10.0, 105.0)
    assert db.acquire_lease("driver", "a", 10.0, 105.0)  # renewal
    assert db.acquire_lease("driver", "b", 10.0, 116.0)  # a's expired


def test_heartbeats_are_folded_in_one_transaction(db: SqliteStorage) -> None:
    for name in ("h1", "h2"):
        db.upsert_agent(AgentRecord(name, {}, last_seen=1.0, connected=True))
    db.touch_agents({"h1": (5.0, {"firing": 1}), "h2": (0.5, {})})
    agents = {a.host_id: a for a in db.agents()}
    assert agents["h1"].last_seen == 5.0 and agents["h1"].health == {"firing": 1}
    assert agents["h2"].last_seen == 1.0  # never moves back
    db.disconnect_all()
    assert not any(a.connected for a in db.agents())
