"""The SQLite journal: folded decisions, intent-before-action, approvals, breakers, escalation
dedupe, the notification queue, retention and schema versions."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import journal as journal_module
from agent.journal import MIGRATIONS, Journal

T0 = 1_700_000_000.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "stanch.db"


@pytest.fixture
def j(path: Path) -> Iterator[Journal]:
    journal = Journal(path)
    yield journal
    journal.close()


def decide(
    j: Journal,
    outcome: str,
    reason: str,
    at: float,
    *,
    message: str | None = None,
    observed: dict[str, Any] | None = None,
    until: float | None = None,
    execution_id: str | None = None,
) -> int:
    return j.record_decision(
        "web",
        at,
        outcome,
        reason,
        message if message is not None else f"{reason} at {at:g}",
        observed if observed is not None else {"web.ok": 0.0},
        ["web.ok = 0 < 1"],
        until=until,
        execution_id=execution_id,
    )


# ---- decisions -------------------------------------------------------------------------------


def test_identical_decisions_fold_into_one_row_with_a_repeat_count(j: Journal) -> None:
    first = decide(j, "suppressed", "cooldown", T0, until=T0 + 300)
    for i in range(1, 5):
        assert decide(j, "suppressed", "cooldown", T0 + i, until=T0 + 300, message=f"m{i}") == first
    (row,) = j.decisions("web")
    assert row.id == first
    assert (row.at, row.last_at, row.repeat) == (T0, T0 + 4, 5)
    assert row.message == "m4"  # the latest words, the first time
    assert row.until == T0 + 300
    assert row.observed == {"web.ok": 0.0}
    assert row.why == ["web.ok = 0 < 1"]


def test_a_different_reason_starts_a_new_row(j: Journal) -> None:
    a = decide(j, "suppressed", "cooldown", T0)
    b = decide(j, "suppressed", "budget", T0 + 1)
    c = decide(j, "suppressed", "cooldown", T0 + 2)
    assert len({a, b, c}) == 3
    assert [r.reason for r in j.decisions("web")] == ["cooldown", "budget", "cooldown"]
    assert all(r.repeat == 1 for r in j.decisions("web"))


def test_folding_is_per_policy(j: Journal) -> None:
    a = decide(j, "suppressed", "cooldown", T0)
    j.record_decision("db", T0 + 1, "suppressed", "cooldown", "m", {}, [])
    assert decide(j, "suppressed", "cooldown", T0 + 2) == a
    assert len(j.decisions()) == 2


def test_forget_last_decision_starts_a_fresh_row(j: Journal) -> None:
    a = decide(j, "suppressed", "cooldown", T0)
    j.forget_last_decision("web")
    b = decide(j, "suppressed", "cooldown", T0 + 1)
    assert a != b
    j.forget_last_decision("never-seen")  # no error


def test_actions_are_never_folded(j: Journal) -> None:
    ids = [decide(j, "fixed", "verification", T0 + i, execution_id=f"e{i}") for i in range(3)]
    assert len(set(ids)) == 3
    assert [r.execution_id for r in j.decisions("web")] == ["e2", "e1", "e0"]


def test_a_decision_after_an_action_does_not_fold_into_the_action(j: Journal) -> None:
    action = decide(j, "fixed", "verification", T0, execution_id="e1")
    later = decide(j, "fixed", "verification", T0 + 5)
    assert later != action
    rows = {r.id: r for r in j.decisions("web")}
    assert rows[action].repeat == 1
    assert rows[action].last_at == T0


def test_folding_memory_does_not_survive_a_reopen(path: Path) -> None:
    j1 = Journal(path)
    a = decide(j1, "suppressed", "cooldown", T0)
    j1.close()
    j2 = Journal(path)
    try:
        assert decide(j2, "suppressed", "cooldown", T0 + 1) != a
    finally:
        j2.close()


def test_decisions_newest_first_with_limit_and_filter(j: Journal) -> None:
    for i in range(5):
        decide(j, "suppressed", f"r{i}", T0 + i)
    j.record_decision("db", T0, "act", "rule_matched", "m", {}, [])
    assert [r.reason for r in j.decisions("web", limit=2)] == ["r4", "r3"]
    assert [r.policy for r in j.decisions(limit=1)] == ["db"]
    assert len(j.decisions(limit=100)) == 6


def test_observed_values_that_json_cannot_encode_are_stringified(j: Journal) -> None:
    decide(j, "act", "rule_matched", T0, observed={"p": Path("/x")})
    assert j.decisions("web")[0].observed == {"p": "/x"}


# ---- executions: intent before action ------------------------------------------------------


def test_intent_row_is_committed_before_any_command(j: Journal, path: Path) -> None:
    decision = decide(j, "act", "rule_matched", T0)
    eid = j.begin_execution("web", T0, decision, {"web.ok": 0.0})
    # Another connection (another process, or the same file after a crash) sees the intent.
    other = sqlite3.connect(path)
    try:
        row = other.execute(
            "SELECT policy, status, started_at, decision_id FROM executions WHERE id = ?", (eid,)
        ).fetchone()
    finally:
        other.close()
    assert row == ("web", "running", T0, decision)
    ex = j.execution(eid)
    assert ex is not None
    assert (ex.status, ex.finished_at, ex.steps, ex.observed) == (
        "running",
        None,
        [],
        {"web.ok": 0.0},
    )


def test_steps_and_finish_are_recorded(j: Journal) -> None:
    eid = j.begin_execution("web", T0, None, {})
    j.record_steps(eid, [{"name": "restart", "ok": True}])
    j.record_steps(eid, [{"name": "restart", "ok": True}, {"name": "reload", "ok": False}])
    j.finish_execution(eid, T0 + 9, "failed", "still down after 5.0s", "step 'reload' failed")
    ex = j.execution(eid)
    assert ex is not None
    assert [s["name"] for s in ex.steps] == ["restart", "reload"]
    assert (ex.status, ex.finished_at, ex.verification, ex.error) == (
        "failed",
        T0 + 9,
        "still down after 5.0s",
        "step 'reload' failed",
    )
    assert j.execution("nope") is None


def test_recover_interrupted_marks_running_rows_and_they_still_count(path: Path) -> None:
    j1 = Journal(path)
    done = j1.begin_execution("web", T0, None, {})
    j1.finish_execution(done, T0 + 5, "fixed", "cleared")
    crashed = j1.begin_execution("web", T0 + 100, None, {})
    other = j1.begin_execution("db", T0 + 101, None, {})
    j1.close()  # the agent dies here, mid-remediation

    j2 = Journal(path)
    try:
        recovered = j2.recover_interrupted(T0 + 200)
        assert sorted(r.id for r in recovered) == sorted([crashed, other])
        for eid in (crashed, other):
            ex = j2.execution(eid)
            assert ex is not None
            assert ex.status == "interrupted"
            assert ex.finished_at == T0 + 200
            assert ex.error == "agent stopped before the result was recorded; not re-run"
        fixed = j2.execution(done)
        assert fixed is not None and fixed.status == "fixed"
        assert j2.recover_interrupted(T0 + 300) == []
        # Every attempt counts against the budget, interrupted ones too.
        assert sorted(j2.attempts_since("web", T0 - 1)) == [T0, T0 + 100]
        assert j2.attempts_since("web", T0) == (T0 + 100,)
        assert sorted(j2.host_attempts_since(T0 - 1)) == [T0, T0 + 100, T0 + 101]
    finally:
        j2.close()


def test_executions_newest_first(j: Journal) -> None:
    ids = [j.begin_execution("web", T0 + i, None, {}) for i in range(3)]
    j.begin_execution("db", T0 + 10, None, {})
    assert [e.id for e in j.executions("web")] == ids[::-1]
    assert [e.id for e in j.executions("web", limit=1)] == [ids[2]]
    assert j.executions(limit=1)[0].policy == "db"


# ---- approvals -------------------------------------------------------------------------------


def test_approval_lifecycle_pending_approved_used(j: Journal) -> None:
    aid = j.create_approval("web", T0, T0 + 3600, "approve 1 step (restart)")
    row = j.latest_approval("web")
    assert row is not None
    assert (row["id"], row["status"], row["expires_at"]) == (aid, "pending", T0 + 3600)
    assert [r["id"] for r in j.approvals()] == [aid]

    assert j.decide_approval(aid, True, "alice", T0 + 60) == "web"
    row = j.latest_approval("web")
    assert row is not None
    assert (row["status"], row["decided_by"], row["decided_at"]) == ("approved", "alice", T0 + 60)
    assert j.approvals() == []

    eid = j.begin_execution("web", T0 + 61, None, {}, approval_id=aid)
    assert j.latest_approval("web") is None  # used: one approval, one run
    assert [r["status"] for r in j.approvals(None)] == ["used"]
    ex = j.execution(eid)
    assert ex is not None


def test_rejection(j: Journal) -> None:
    aid = j.create_approval("web", T0, T0 + 3600, "m")
    assert j.decide_approval(aid, False, "bob", T0 + 1) == "web"
    row = j.latest_approval("web")
    assert row is not None
    assert (row["status"], row["decided_by"]) == ("rejected", "bob")


def test_a_new_request_expires_the_pending_one(j: Journal) -> None:
    old = j.create_approval("web", T0, T0 + 3600, "m")
    other = j.create_approval("db", T0, T0 + 3600, "m")
    new = j.create_approval("web", T0 + 10, T0 + 3610, "m")
    statuses = {r["id"]: r["status"] for r in j.approvals(None)}
    assert statuses == {old: "expired", other: "pending", new: "pending"}
    row = j.latest_approval("web")
    assert row is not None and row["id"] == new
    with pytest.raises(LookupError, match=f"approval {old} is already expired"):
        j.decide_approval(old, True, "alice", T0 + 20)


def test_decide_approval_errors(j: Journal) -> None:
    with pytest.raises(
        LookupError, match="no approval request 'nope'; see `stanch-agent approvals`"
    ):
        j.decide_approval("nope", True, "alice", T0)
    aid = j.create_approval("web", T0, T0 + 3600, "m")
    j.decide_approval(aid, True, "alice", T0 + 1)
    with pytest.raises(LookupError, match=f"approval {aid} is already approved"):
        j.decide_approval(aid, False, "bob", T0 + 2)


def test_deciding_an_expired_request_fails_and_records_the_expiry(j: Journal) -> None:
    aid = j.create_approval("web", T0, T0 + 60, "m")
    with pytest.raises(LookupError, match=f"approval {aid} expired; the agent will ask again"):
        j.decide_approval(aid, True, "alice", T0 + 60)
    # The request no longer shows as pending in `stanch-agent approvals`.
    assert j.approvals() == []
    assert [r["status"] for r in j.approvals(None)] == ["expired"]


# ---- breakers --------------------------------------------------------------------------------


def test_breaker_set_update_reset(j: Journal) -> None:
    assert j.breaker("web") == (0, None)
    j.set_breaker("web", 1, None)
    assert j.breaker("web") == (1, None)
    j.set_breaker("web", 3, T0)
    assert j.breaker("web") == (3, T0)
    assert j.breaker("db") == (0, None)
    assert j.reset_breaker("web") is True
    assert j.breaker("web") == (0, None)
    assert j.reset_breaker("web") is False


# ---- escalation dedupe -----------------------------------------------------------------------


def test_should_escalate_once_per_repeat(j: Journal) -> None:
    assert j.should_escalate("web", "breaker_open", T0, repeat=3600) is True
    assert j.should_escalate("web", "breaker_open", T0 + 1, repeat=3600) is False
    assert j.should_escalate("web", "breaker_open", T0 + 3599, repeat=3600) is False
    assert j.should_escalate("web", "budget", T0 + 1, repeat=3600) is True  # another reason
    assert j.should_escalate("db", "breaker_open", T0 + 1, repeat=3600) is True  # another policy
    assert j.should_escalate("web", "breaker_open", T0 + 3600, repeat=3600) is True
    assert j.should_escalate("web", "breaker_open", T0 + 3601, repeat=3600) is False


def test_clear_escalations_allows_a_fresh_page(j: Journal) -> None:
    assert j.should_escalate("web", "context", T0, repeat=3600)
    assert j.should_escalate("db", "context", T0, repeat=3600)
    j.clear_escalations("web")
    assert j.should_escalate("web", "context", T0 + 1, repeat=3600)
    assert not j.should_escalate("db", "context", T0 + 1, repeat=3600)


# ---- notification queue ----------------------------------------------------------------------


def test_notifications_are_due_in_order(j: Journal) -> None:
    a = j.enqueue_notification("oncall", {"policy": "web", "n": 1}, T0)
    b = j.enqueue_notification("slack", {"policy": "web", "n": 2}, T0 + 1)
    c = j.enqueue_notification("oncall", {"policy": "db", "n": 3}, T0 + 2)
    assert a < b < c
    assert j.due_notifications(T0 - 1) == []
    assert [n.id for n in j.due_notifications(T0 + 1)] == [a, b]
    due = j.due_notifications(T0 + 10)
    assert [(n.id, n.sink, n.payload["n"], n.attempts) for n in due] == [
        (a, "oncall", 1, 0),
        (b, "slack", 2, 0),
        (c, "oncall", 3, 0),
    ]
    assert [n.id for n in j.due_notifications(T0 + 10, limit=2)] == [a, b]
    assert j.next_notification_at() == T0


def test_mark_delivered_retry_and_failed(j: Journal) -> None:
    a = j.enqueue_notification("oncall", {"n": 1}, T0)
    b = j.enqueue_notification("oncall", {"n": 2}, T0)
    c = j.enqueue_notification("oncall", {"n": 3}, T0)
    j.mark_notification(a, "delivered", T0 + 1)
    j.mark_notification(b, "pending", T0 + 1, next_at=T0 + 30, error="HTTP 503")
    j.mark_notification(c, "failed", T0 + 1, error="gave up")
    assert j.due_notifications(T0 + 29) == []
    (retry,) = j.due_notifications(T0 + 30)
    assert (retry.id, retry.attempts) == (b, 1)
    assert j.next_notification_at() == T0 + 30
    rows = {r["id"]: r for r in j.notifications()}
    assert (rows[a]["status"], rows[a]["delivered_at"], rows[a]["attempts"]) == (
        "delivered",
        T0 + 1,
        1,
    )
    assert (rows[b]["status"], rows[b]["last_error"], rows[b]["delivered_at"]) == (
        "pending",
        "HTTP 503",
        None,
    )
    assert (rows[c]["status"], rows[c]["last_error"]) == ("failed", "gave up")
    j.mark_notification(b, "delivered", T0 + 31)
    assert j.next_notification_at() is None
    assert [r["id"] for r in j.notifications()] == [c, b, a]


# ---- status snapshot -------------------------------------------------------------------------


def test_policy_and_agent_state(j: Journal) -> None:
    j.put_policy_state("web", T0, {"firing": True})
    j.put_policy_state("db", T0, {"firing": False})
    j.put_policy_state("web", T0 + 1, {"firing": False})
    assert j.policy_states() == {
        "db": {"firing": False, "updated_at": T0},
        "web": {"firing": False, "updated_at": T0 + 1},
    }
    j.drop_policy_states(["web"])
    assert list(j.policy_states()) == ["web"]
    j.put_agent_state({"pid": 42, "version": "0.1.0"})
    j.put_agent_state({"pid": 43})
    assert j.agent_state() == {"pid": 43, "version": "0.1.0"}


# ---- retention -------------------------------------------------------------------------------


def test_prune_keeps_the_newest_rows_per_policy(
    j: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "KEEP_DECISIONS_PER_POLICY", 3)
    monkeypatch.setattr(journal_module, "KEEP_EXECUTIONS_PER_POLICY", 2)
    for policy, count in (("web", 6), ("db", 2)):
        for i in range(count):
            j.record_decision(policy, T0 + i, "suppressed", f"r{i}", "m", {}, [])
    web_runs = [j.begin_execution("web", T0 + i, None, {}) for i in range(4)]
    for eid in web_runs[1:]:
        j.finish_execution(eid, T0 + 10, "fixed", "")
    db_run = j.begin_execution("db", T0, None, {})
    j.finish_execution(db_run, T0 + 10, "fixed", "")
    j.prune(T0 + 100)
    assert [r.reason for r in j.decisions("web")] == ["r5", "r4", "r3"]
    assert [r.reason for r in j.decisions("db")] == ["r1", "r0"]
    # The newest two finished runs stay; a row still running is never pruned (crash recovery
    # needs it), however old.
    assert sorted(e.id for e in j.executions("web")) == sorted([web_runs[0], *web_runs[2:]])
    assert [e.id for e in j.executions("db")] == [db_run]
    # Folding still works after a prune: the latest row survived.
    assert j.record_decision("web", T0 + 7, "suppressed", "r5", "m", {}, []) == (
        j.decisions("web")[0].id
    )


def test_prune_drops_old_finished_notifications_only(j: Journal) -> None:
    week = journal_module.KEEP_NOTIFICATIONS_SECONDS
    old_done = j.enqueue_notification("s", {}, T0)
    old_failed = j.enqueue_notification("s", {}, T0)
    old_pending = j.enqueue_notification("s", {}, T0)
    new_done = j.enqueue_notification("s", {}, T0 + week)
    for nid in (old_done, new_done):
        j.mark_notification(nid, "delivered", T0 + week)
    j.mark_notification(old_failed, "failed", T0 + 1)
    j.prune(T0 + week + 1)
    assert sorted(r["id"] for r in j.notifications()) == [old_pending, new_done]


# ---- schema versions -------------------------------------------------------------------------


def test_new_file_is_at_the_current_schema_in_wal_mode(j: Journal, path: Path) -> None:
    assert j.schema_version() == len(MIGRATIONS)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        db.close()


def test_reopening_keeps_data_and_version(path: Path) -> None:
    j1 = Journal(path)
    decide(j1, "act", "rule_matched", T0)
    eid = j1.begin_execution("web", T0, None, {})
    j1.set_breaker("web", 2, None)
    j1.close()
    j2 = Journal(path)
    try:
        assert j2.schema_version() == len(MIGRATIONS)
        assert [r.reason for r in j2.decisions("web")] == ["rule_matched"]
        assert j2.execution(eid) is not None
        assert j2.breaker("web") == (2, None)
    finally:
        j2.close()
    assert not list(path.parent.glob("*.bak"))


def test_upgrade_backs_up_the_file_and_keeps_data(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j1 = Journal(path)
    decide(j1, "act", "rule_matched", T0)
    j1.close()
    old = len(MIGRATIONS)
    monkeypatch.setattr(
        journal_module,
        "MIGRATIONS",
        (*MIGRATIONS, "ALTER TABLE decisions ADD COLUMN note TEXT; CREATE TABLE extra (x INT)"),
    )
    j2 = Journal(path)
    try:
        assert j2.schema_version() == old + 1
        assert [r.reason for r in j2.decisions("web")] == ["rule_matched"]
    finally:
        j2.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT note FROM decisions").fetchall() == [(None,)]
        assert db.execute("SELECT count(*) FROM extra").fetchone() == (0,)
    finally:
        db.close()
    backup = path.with_suffix(f".v{old}.bak")
    assert backup.exists()


def test_a_newer_schema_refuses_to_open(path: Path) -> None:
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError) as exc:
        Journal(path)
    message = str(exc.value)
    assert str(path) in message
    assert f"state schema v{len(MIGRATIONS) + 1} is newer than this agent" in message
    assert "upgrade the agent or move the state file aside" in message


# ---- concurrency -----------------------------------------------------------------------------


def test_concurrent_writers_from_threads(j: Journal) -> None:
    errors: list[BaseException] = []

    def work(policy: str) -> None:
        try:
            for i in range(20):
                j.record_decision(policy, T0 + i, "suppressed", f"r{i % 2}", "m", {}, [])
                j.begin_execution(policy, T0 + i, None, {})
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"p{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(j.decisions(limit=1000)) == 4 * 20
    assert len(j.host_attempts_since(0)) == 4 * 20
