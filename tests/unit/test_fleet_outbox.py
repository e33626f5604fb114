"""The outbox: what the journal reports, the bound and its drop counter, acks, bounded bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.bundle.rejection import Rejection, RejectionLog
from agent.fleet.outbox import MAX_BODY_BYTES, Outbox, bounded_body
from agent.fleet.rejections import RejectionForwarder
from agent.journal import Journal, Report

T0 = 1_700_000_000.0


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state.db")
    yield j
    j.close()


@pytest.fixture
def outbox(journal: Journal) -> Outbox:
    box = Outbox(journal, limit=1000)
    journal.reporter = box
    return box


def decide(j: Journal, outcome: str, reason: str, execution_id: str | None = None) -> int:
    return j.record_decision(
        "web", T0, outcome, reason, "msg", {"v": 1}, ["why"], None, execution_id
    )


def kinds(outbox: Outbox) -> list[tuple[str, str, str]]:
    return [(r.kind, r.outcome, r.reason) for r in outbox.pending(limit=100)]


def test_a_journal_without_a_reporter_reports_nothing(journal: Journal) -> None:
    decide(journal, "act", "fired")
    journal.report(Report("escalation", "web", T0, "escalated", "storm", {}))
    assert Outbox(journal, 10).depth() == 0


def test_new_decision_rows_are_reported_and_repeats_fold(journal: Journal, outbox: Outbox) -> None:
    first = decide(journal, "suppressed", "cooldown")
    assert decide(journal, "suppressed", "cooldown") == first  # folded: no second report
    decide(journal, "suppressed", "budget")
    assert kinds(outbox) == [
        ("decision", "suppressed", "cooldown"),
        ("decision", "suppressed", "budget"),
    ]
    body = json.loads(outbox.pending()[0].body)
    assert body["id"] == first and body["observed"] == {"v": 1} and body["why"] == ["why"]


def test_execution_end_and_interruption_are_reported(journal: Journal, outbox: Outbox) -> None:
    done = journal.begin_execution("web", T0, None, {"v": 1})
    journal.record_steps(done, [{"name": "restart", "stdout": "x" * 5000, "ok": True}])
    journal.finish_execution(done, T0 + 5, "fixed", "cleared after 1s")
    crashed = journal.begin_execution("web", T0 + 10, None, {})
    assert outbox.depth() == 1, "an intent alone is not reported; its end is"
    journal.mark_interrupted(crashed, T0 + 20)
    journal.mark_interrupted(crashed, T0 + 21)  # already marked: not reported twice
    assert kinds(outbox) == [
        ("execution", "fixed", "verification"),
        ("execution", "interrupted", "crash_recovery"),
    ]
    first = outbox.pending()[0]
    body = json.loads(first.body)
    assert first.at == T0 + 5 and body["id"] == done and body["verification"] == "cleared after 1s"
    assert body["steps"][0]["stdout"].startswith("...") and len(body["steps"][0]["stdout"]) < 1100


def test_an_execution_report_says_when_the_problem_was_detected(
    journal: Journal, outbox: Outbox
) -> None:
    journal.record_decision("web", T0, "cleared", "condition_cleared", "", {}, [])
    journal.record_decision("web", T0 + 10, "suppressed", "cooldown", "", {}, [])
    journal.record_decision("web", T0 + 20, "suppressed", "cooldown", "", {}, [])  # folded
    acted = journal.record_decision("web", T0 + 30, "act", "rule_matched", "", {}, [])
    execution = journal.begin_execution("web", T0 + 30, acted, {})
    journal.finish_execution(execution, T0 + 40, "fixed", "cleared")
    body = json.loads(outbox.pending(limit=10)[-1].body)
    assert body["detected_at"] == T0 + 10 and body["finished_at"] == T0 + 40


def test_the_report_commits_with_its_record(journal: Journal, outbox: Outbox) -> None:
    class Boom(Outbox):
        def add(self, db: object, report: Report) -> None:  # type: ignore[override]
            raise RuntimeError("disk full")

    journal.reporter = Boom(journal, 10)
    with pytest.raises(RuntimeError):
        decide(journal, "act", "fired")
    assert journal.decisions("web") == [], "no record without its report"


def test_the_bound_drops_the_oldest_and_counts_it(tmp_path: Path, journal: Journal) -> None:
    box = Outbox(journal, limit=3)
    for i in range(5):
        box.put(Report("decision", f"p{i}", T0 + i, "act", "fired", {}))
    assert box.depth() == 3 and box.dropped() == 2
    assert [r.policy for r in box.pending()] == ["p2", "p3", "p4"]
    box.put(Report("decision", "p5", T0, "act", "fired", {}))
    assert box.dropped() == 3
    journal.close()
    reopened = Journal(tmp_path / "state.db")
    try:
        again = Outbox(reopened, limit=3)
        assert again.dropped() == 3 and again.depth() == 3, "the counter is persisted"
    finally:
        reopened.close()


def test_ack_deletes_exactly_the_acked_ids_and_ids_are_never_reused(outbox: Outbox) -> None:
    for i in range(4):
        outbox.put(Report("decision", f"p{i}", T0, "act", "fired", {}))
    ids = [r.id for r in outbox.pending()]
    assert outbox.ack([ids[0], ids[2], 999]) == 2
    assert outbox.ack([ids[0]]) == 0, "a re-ack deletes nothing"
    assert [r.id for r in outbox.pending()] == [ids[1], ids[3]]
    assert [r.id for r in outbox.pending(after=ids[1])] == [ids[3]]
    outbox.ack([ids[1], ids[3]])
    outbox.put(Report("decision", "later", T0, "act", "fired", {}))
    assert outbox.pending()[0].id > ids[3], "AUTOINCREMENT: the control plane dedups by id"


def test_an_oversized_body_keeps_its_summary() -> None:
    report = Report(
        "decision",
        "web",
        T0,
        "act",
        "fired",
        {"id": 3, "message": "m" * 5000, "observed": {f"k{i}": "v" * 100 for i in range(500)}},
    )
    body = json.loads(bounded_body(report))
    assert len(bounded_body(report)) <= MAX_BODY_BYTES
    assert body["id"] == 3 and len(body["message"]) == 2048 and "observed" not in body
    assert "truncated" in body


def test_bundle_rejections_are_forwarded_once(
    tmp_path: Path, journal: Journal, outbox: Outbox
) -> None:
    log = RejectionLog(tmp_path)
    forwarder = RejectionForwarder(tmp_path, journal, outbox)
    assert forwarder.scan() == 0
    log.append(Rejection(T0, "expired", "too old", "/tmp/a.bundle", "d1", "web", 3))
    log.append(Rejection(T0 + 1, "hash_mismatch", "tampered", "/tmp/b.bundle", "d2", "web", 4))
    assert forwarder.scan() == 2
    assert forwarder.scan() == 0
    assert RejectionForwarder(tmp_path, journal, outbox).scan() == 0, "watermark persisted"
    log.append(Rejection(T0 + 2, "unknown_key", "who?", "/tmp/c.bundle"))
    fresh = RejectionForwarder(tmp_path, journal, outbox)
    fresh.expect("/tmp/c.bundle", {"seq": 9})
    assert fresh.scan() == 1
    reports = outbox.pending()
    assert [(r.kind, r.reason) for r in reports] == [
        ("rejection", "expired"),
        ("rejection", "hash_mismatch"),
        ("rejection", "unknown_key"),
    ]
    assert json.loads(reports[0].body)["source"] == "bundle_store"
    assert json.loads(reports[2].body)["seq"] == 9


def test_concurrent_scans_report_a_rejection_once_with_its_context(
    tmp_path: Path, journal: Journal, outbox: Outbox
) -> None:
    """The heartbeat loop and the applier scan at the same time; the line is reported once, and
    with the context the applier registered before the store wrote it."""
    forwarder = RejectionForwarder(tmp_path, journal, outbox)
    forwarder.expect("/tmp/d.bundle", {"source": "assignment", "seq": 5})
    RejectionLog(tmp_path).append(Rejection(T0, "unknown_key", "who?", "/tmp/d.bundle"))
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda _: forwarder.scan(), range(8)))
    assert sorted(counts) == [0] * 7 + [1]
    (report,) = outbox.pending()
    assert json.loads(report.body)["seq"] == 5
