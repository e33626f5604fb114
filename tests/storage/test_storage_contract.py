"""The storage contract, run against every backend (``storage`` is SQLite and PostgreSQL):
exactly-once reports, sequence numbers, atomic bookkeeping, leases, and each record read back
as it was written."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controlplane.storage.base import (
    AgentRecord,
    ApplyResult,
    AssignmentPayload,
    AssignmentRequest,
    BundleRecord,
    Report,
    ReportQuery,
    RolloutHost,
    RolloutRecord,
    Storage,
)
from controlplane.storage.schema import MIGRATIONS


def sign(payload: AssignmentPayload) -> bytes:
    return f"{payload.host_id}:{payload.seq}:{payload.bundle_digest}".encode()


def bundle(digest: str, name: str = "web", version: int = 1) -> BundleRecord:
    return BundleRecord(digest, name, version, 1.0, 9e9, 3, ("k1", "k2"), 2.0, {"nginx": 1.5})


def rollout(rid: str = "r1", state: str = "running", created: float = 10.0) -> RolloutRecord:
    return RolloutRecord(
        id=rid,
        bundle_digest="d2",
        selector={"env": "prod"},
        waves=("1", "50%", "100%"),
        bake_seconds=1.5,
        gates={"fixed_rate": ">= 0.9"},
        gate_modes={"fixed_rate": "enforce"},
        state=state,
        wave=0,
        wave_started_at=created,
        created_at=created,
        updated_at=created,
        reason="",
        by="alice",
        gate_results=({"gate": "fixed_rate", "value": 1.0},),
    )


def test_a_new_store_is_at_the_latest_schema(storage: Storage) -> None:
    assert storage.schema_version() == len(MIGRATIONS)


def test_reports_are_stored_once_per_host_and_id(storage: Storage) -> None:
    batch = [Report("h1", i, "execution", "p", 100.0 + i, "fixed", "", "{}") for i in (1, 2)]
    assert storage.insert_reports(batch) == 2
    other_host = [Report("h2", 1, "execution", "p", 101.0, "failed", "", "{}")]
    assert storage.insert_reports([*batch, *other_host]) == 1
    assert [(r.host_id, r.id) for r in storage.reports(ReportQuery())] == [
        ("h1", 2),
        ("h2", 1),
        ("h1", 1),
    ]
    assert [r.id for r in storage.reports(ReportQuery(host="h1", since=101.5))] == [2]
    assert [r.host_id for r in storage.reports(ReportQuery(hosts=("h2",)))] == ["h2"]
    assert storage.prune_reports(before=101.5) == 2  # retention: h1/1 and h2/1
    assert [(r.host_id, r.id) for r in storage.reports(ReportQuery())] == [("h1", 2)]


def test_a_batch_repeating_a_report_stores_it_once(storage: Storage) -> None:
    again = Report("h1", 7, "execution", "p", 1.0, "fixed", "", '{"a": 1}')
    assert storage.insert_reports([again, again]) == 1
    assert storage.insert_reports([]) == 0
    (stored,) = storage.reports(ReportQuery())
    assert stored == again


def test_reports_filter_by_policy_and_kind_and_limit(storage: Storage) -> None:
    storage.insert_reports(
        [
            Report("h1", 1, "execution", "nginx", 1.0, "fixed", "", "{}"),
            Report("h1", 2, "decision", "nginx", 2.0, "skipped", "cooldown", "{}"),
            Report("h1", 3, "execution", "disk", 3.0, "failed", "exit 1", "{}"),
        ]
    )
    assert [r.id for r in storage.reports(ReportQuery(policy="nginx"))] == [2, 1]
    assert [r.id for r in storage.reports(ReportQuery(kind="execution"))] == [3, 1]
    assert [r.id for r in storage.reports(ReportQuery(limit=1))] == [3]


def test_sequences_rise_per_host_and_above_what_the_agent_reported(storage: Storage) -> None:
    storage.upsert_agent(AgentRecord("h1", {}, last_assignment_seq=41))
    first = storage.issue_assignments([AssignmentRequest("h1", "d1", 1, "r")], 10.0, sign)
    second = storage.issue_assignments(
        [AssignmentRequest("h1", "d2", 2, "r"), AssignmentRequest("h2", "d2", 2, "r")], 11.0, sign
    )
    assert [a.seq for a in first] == [42]  # a restored database never goes below the agent
    assert [(a.host_id, a.seq) for a in second] == [("h1", 43), ("h2", 1)]
    assert second[0].envelope == b"h1:43:d2"
    assert storage.current_assignment("h1") == second[0]
    assert storage.current_assignments() == {"h1": second[0], "h2": second[1]}
    assert storage.pending_assignments() == [second[0], second[1]]  # newest per host only
    storage.record_apply("h2", 1, "d2", True, "", 13.0)
    assert storage.pending_assignments() == [second[0]]
    assert storage.issue_assignments([], 12.0, sign) == []


def test_two_requests_for_one_host_in_one_call_get_consecutive_sequences(
    storage: Storage,
) -> None:
    issued = storage.issue_assignments(
        [AssignmentRequest("h1", "d1", 1, "r"), AssignmentRequest("h1", "d2", 2, "r")], 1.0, sign
    )
    assert [a.seq for a in issued] == [1, 2]
    assert storage.current_assignment("h1") == issued[1]


def test_an_assignment_and_its_rollout_row_are_one_transaction(storage: Storage) -> None:
    track = RolloutHost("r", "h1", 0, "d1", 1, 0, 10.0)

    def broken(_: AssignmentPayload) -> bytes:
        raise RuntimeError("signer down")

    with pytest.raises(RuntimeError):
        storage.issue_assignments([AssignmentRequest("h1", "d2", 2, "r", track)], 10.0, broken)
    assert storage.current_assignment("h1") is None and storage.rollout_host("r", "h1") is None
    (issued,) = storage.issue_assignments(
        [AssignmentRequest("h1", "d2", 2, "r", track)], 10.0, sign
    )
    row = storage.rollout_host("r", "h1")
    assert row is not None and row.seq == issued.seq and row.previous_digest == "d1"


def test_apply_results_update_the_assignment_and_the_agent(storage: Storage) -> None:
    storage.upsert_agent(AgentRecord("h1", {"env": "prod"}, bundle_digest="d1", bundle_version=1))
    (a,) = storage.issue_assignments([AssignmentRequest("h1", "d2", 2, "r")], 1.0, sign)
    assert storage.record_apply("h1", a.seq + 1, "d2", True, "", 2.0) is None
    done = storage.record_apply("h1", a.seq, "d2", True, "", 2.0)
    assert done is not None and done.status == "applied"
    agent = storage.agent("h1")
    assert agent is not None and (agent.bundle_digest, agent.bundle_version) == ("d2", 2)
    assert agent.last_assignment_seq == a.seq


def test_a_rejected_apply_leaves_the_agent_on_its_bundle(storage: Storage) -> None:
    storage.upsert_agent(AgentRecord("h1", {}, bundle_digest="d1", bundle_version=1))
    (a,) = storage.issue_assignments([AssignmentRequest("h1", "d2", 2, "r")], 1.0, sign)
    done = storage.record_apply("h1", a.seq, "d2", False, "trust_error", 2.0)
    assert done is not None and (done.status, done.reason) == ("rejected", "trust_error")
    current = storage.current_assignment("h1")
    assert current is not None and current.status == "rejected"
    agent = storage.agent("h1")
    assert agent is not None and agent.bundle_digest == "d1" and agent.last_assignment_seq == 0


def test_apply_results_are_recorded_with_their_rollout_hosts_in_one_batch(
    storage: Storage,
) -> None:
    for host in ("h1", "h2", "h3", "h4"):
        storage.upsert_agent(AgentRecord(host, {}, bundle_digest="d1", bundle_version=1))
    requests = [
        AssignmentRequest(h, "d2", 2, "r", RolloutHost("r", h, 0, "d1", 1, 0, 1.0))
        for h in ("h1", "h2", "h3")
    ] + [AssignmentRequest("h4", "d2", 2, "")]
    a1, a2, a3, a4 = storage.issue_assignments(requests, 1.0, sign)
    results = [
        ApplyResult("h1", a1.seq, "d2", True, "", 2.0, "fine"),
        ApplyResult("h2", a2.seq, "d2", False, "invalid_policy", 3.0, "invalid_policy"),
        ApplyResult("h3", a3.seq, "d2", False, "fetch_failed", 4.0, "fetch_failed", True),
        ApplyResult("h4", a4.seq, "d2", True, "", 5.0),
        ApplyResult("h1", a1.seq + 7, "d2", True, "", 6.0),
    ]
    one, two, three, four, none = storage.record_applies(results)
    assert none is None and storage.record_applies([]) == []
    assert one is not None and one.assignment.status == "applied"
    assert one.rollout_host == RolloutHost(
        "r", "h1", 0, "d1", 1, a1.seq, 1.0, "applied", "fine", 2.0
    )
    assert storage.rollout_host("r", "h1") == one.rollout_host
    assert two is not None and two.assignment.status == "rejected"
    assert two.rollout_host is not None and two.rollout_host.status == "failed"
    assert three is not None and three.rollout_host is not None
    assert (three.rollout_host.status, three.rollout_host.reason) == ("assigned", "fetch_failed")
    assert storage.rollout_host("r", "h3") == three.rollout_host
    assert four is not None and four.rollout_host is None and four.assignment.status == "applied"
    agents = {a.host_id: a for a in storage.agents()}
    assert [agents[h].bundle_digest for h in ("h1", "h2", "h3", "h4")] == ["d2", "d1", "d1", "d2"]
    # A row no longer ``assigned`` is left alone (a duplicate result changes nothing there).
    (again,) = storage.record_applies([ApplyResult("h2", a2.seq, "d2", True, "", 9.0, "x")])
    assert again is not None and again.rollout_host is None
    stored = storage.rollout_host("r", "h2")
    assert stored is not None and stored.status == "failed"


def test_agents_round_trip_and_their_sequence_never_moves_back(storage: Storage) -> None:
    record = AgentRecord(
        "web-2", {"env": "prod", "role": "web"}, "1.2.0", "d1", 3, 5.0, True, 9, {"firing": 2}
    )
    storage.upsert_agent(record)
    assert storage.agent("web-2") == record
    storage.upsert_agent(AgentRecord("web-2", {"env": "prod"}, last_assignment_seq=4))
    again = storage.agent("web-2")
    assert again is not None and again.last_assignment_seq == 9 and again.labels == {"env": "prod"}
    storage.upsert_agent(AgentRecord("Web-1", {}))
    storage.upsert_agent(AgentRecord("web-10", {}))
    assert [a.host_id for a in storage.agents()] == ["Web-1", "web-10", "web-2"]  # bytewise
    storage.set_connected("web-2", False, 7.0, "")
    gone = storage.agent("web-2")
    assert gone is not None and not gone.connected and gone.last_seen == 7.0
    assert storage.agent("nobody") is None
    light = {a.host_id: a for a in storage.agents(health=False)}
    assert light["web-2"] == replace(gone, health={})  # the rest as stored, health not read
    assert [a.host_id for a in storage.agents(False)] == ["Web-1", "web-10", "web-2"]


def test_bundles_are_stored_once_by_digest(storage: Storage) -> None:
    assert storage.put_bundle(bundle("d1"), b"\x00tar\xff")
    assert not storage.put_bundle(bundle("d1", version=9), b"other")
    assert storage.put_bundle(bundle("d2", version=2), b"two")
    assert storage.put_bundle(bundle("d3", name="db"), b"three")
    assert storage.bundle("d1") == bundle("d1")
    assert storage.bundle_data("d1") == b"\x00tar\xff"
    assert storage.bundle("nope") is None and storage.bundle_data("nope") is None
    assert [b.digest for b in storage.bundles()] == ["d3", "d1", "d2"]
    assert [b.digest for b in storage.bundles("web")] == ["d1", "d2"]


def test_rollouts_are_replaced_whole_and_listed_by_state(storage: Storage) -> None:
    storage.put_rollout(rollout("r1"))
    storage.put_rollout(rollout("r2", state="completed", created=11.0))
    assert storage.rollout("r1") == rollout("r1")
    moved = rollout("r1", state="paused")
    storage.put_rollout(moved)
    assert storage.rollout("r1") == moved
    assert [r.id for r in storage.rollouts()] == ["r1", "r2"]
    assert [r.id for r in storage.rollouts(active_only=True)] == ["r1"]
    assert storage.rollout("nope") is None


def test_rollout_hosts_are_upserted_and_listed_by_wave(storage: Storage) -> None:
    rows = [
        RolloutHost("r1", "h2", 1, "d1", 1, 3, 10.0),
        RolloutHost("r1", "h1", 0, "d1", 1, 2, 9.0),
        RolloutHost("r2", "h1", 0, "", 0, 5, 12.0),
    ]
    storage.put_rollout_hosts(rows)
    storage.put_rollout_hosts([])
    assert [h.host_id for h in storage.rollout_hosts("r1")] == ["h1", "h2"]
    applied = RolloutHost("r1", "h2", 1, "d1", 1, 3, 10.0, "applied", "", 11.0)
    storage.put_rollout_hosts([applied])
    assert storage.rollout_host("r1", "h2") == applied
    assert storage.rollout_host("r1", "h9") is None


def test_pauses_expire_and_clear_by_scope_and_selector(storage: Storage) -> None:
    first = storage.add_pause("nginx", {}, 100.0, "r", "me", 1.0)
    storage.add_pause("*", {"role": "db"}, 0.0, "r", "me", 1.0)
    assert first.id > 0 and first.active(50.0)
    assert {p.scope for p in storage.pauses(50.0)} == {"nginx", "*"}
    assert {p.scope for p in storage.pauses(150.0)} == {"*"}  # TTL passed
    assert storage.clear_pauses("*", {}) == []
    assert [p.scope for p in storage.clear_pauses("*", {"role": "db"})] == ["*"]
    assert storage.pauses(50.0)[0].scope == "nginx"


def test_escalations_are_numbered_and_read_since(storage: Storage) -> None:
    one = storage.add_escalation(1.0, "rollout", "", "r1 rolled back")
    two = storage.add_escalation(2.0, "storm", "nginx", "paused")
    assert two > one
    assert [(e.id, e.message) for e in storage.escalations(1.5)] == [(two, "paused")]


def test_a_lease_is_held_until_it_expires(storage: Storage) -> None:
    assert storage.acquire_lease("driver", "a", 10.0, 100.0)
    assert not storage.acquire_lease("driver", "b", 10.0, 105.0)
    assert storage.acquire_lease("driver", "a", 10.0, 105.0)  # renewal
    assert storage.acquire_lease("driver", "b", 10.0, 116.0)  # a's expired
    assert not storage.acquire_lease("driver", "a", 10.0, 117.0)
    assert storage.acquire_lease("other", "a", 10.0, 117.0)  # leases are by name
    storage.acquire_lease("other", "a", -1.0, 118.0)  # a clean stop gives it up at once
    assert storage.acquire_lease("other", "b", 10.0, 118.0)


def test_heartbeats_are_folded_in_one_transaction(storage: Storage) -> None:
    for name in ("h1", "h2"):
        storage.upsert_agent(AgentRecord(name, {}, last_seen=1.0, connected=True))
    storage.touch_agents({"h1": (5.0, {"firing": 1}), "h2": (0.5, {})})
    storage.touch_agents({})
    agents = {a.host_id: a for a in storage.agents()}
    assert agents["h1"].last_seen == 5.0 and agents["h1"].health == {"firing": 1}
    assert agents["h2"].last_seen == 1.0  # never moves back
    storage.disconnect_all("cp-1")  # rows no replica claims (as written before v3) included
    assert not any(a.connected for a in storage.agents())
