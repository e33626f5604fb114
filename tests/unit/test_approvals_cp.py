"""``controlplane.approvals`` on a real ControlPlane over real SQLite (not started: no server).

What the list is made of (the newest approval report per host and id), how a decision is signed
(its own payload type, the assignment key), every refusal before anything is sent, and a host
streaming to another replica: reached through that replica's delivery pass (a second
``Delivery`` on the same store), or the decision withdrawn when no pass sends it in time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.keys import key_id
from agent.clock import FakeClock
from agent.fleet.approval import DECISION_PAYLOAD_TYPE, ApprovalDecision, verify_decision
from agent.fleet.assignment import AssignmentRejected, verify_assignment
from controlplane import approvals
from controlplane.assignments import make_signer
from controlplane.bundle_fixtures import KeyRing
from controlplane.connections import Connections
from controlplane.errors import InvalidRequest, NotFound, Refused
from controlplane.plane import ControlPlane
from controlplane.rollout_lease import Delivery
from controlplane.storage.base import AgentRecord, Report
from controlplane.storage.sqlite import SqliteStorage
from stanch.v1 import fleet_pb2

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
T0 = 1_800_000_000.0


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    p = ControlPlane(
        SqliteStorage(tmp_path / "cp.db"),
        KeyRing.generate(1).trust(1),
        make_signer(KEY),
        FakeClock(T0),
    )
    for host in ("web-1", "web-2"):
        p.db.upsert_agent(AgentRecord(host, {"env": "prod"}))
    yield p
    p.store.close()


def report(host: str, rid: int, outcome: str, approval_id: str, **body: Any) -> Report:
    doc = {
        "approval_id": approval_id,
        "created_at": T0 - 60,
        "expires_at": T0 + 600,
        "message": "approve mode: 1 step (restart-app)",
        "observed": {"beat": {"age_seconds": 120.0}},
        **body,
    }
    return Report(host, rid, "approval", "app", T0 - 60 + rid, outcome, "", json.dumps(doc))


def test_pending_is_the_newest_state_per_host_and_id(plane: ControlPlane) -> None:
    plane.db.insert_reports(
        [
            report("web-1", 1, "pending", "a1"),
            report("web-1", 2, "approved", "a1"),  # decided: gone from the list
            report("web-1", 3, "pending", "a2"),
            report("web-1", 4, "refused", "a2"),  # a refused decision changes nothing
            report("web-2", 1, "pending", "b1", expires_at=T0 - 1),  # expired
            report("web-2", 2, "pending", "b2"),
            report("db-9", 1, "pending", "c1"),  # a host the store does not know
        ]
    )
    found = asyncio.run(approvals.pending(plane))
    assert [(p.host_id, p.approval_id) for p in found] == [("web-1", "a2"), ("web-2", "b2")]
    for host, gone in (("web-1", "a1"), ("web-2", "b1")):  # decided, expired: nothing to decide
        with pytest.raises(NotFound, match="no pending approval"):
            decide(plane, host, gone)
    first = found[0]
    assert first.observed == {"beat": {"age_seconds": 120.0}}
    assert (first.created_at, first.expires_at, first.connected) == (T0 - 60, T0 + 600, False)


def test_a_decision_is_signed_with_its_own_type(plane: ControlPlane) -> None:
    from agent.fleet.approval import ApprovalDecision

    d = ApprovalDecision("web-1", "a1", "app", True, "alice", T0, T0 + 60, "ab" * 16)
    envelope = approvals.sign_decision(plane, d)
    assert json.loads(envelope)["payloadType"] == DECISION_PAYLOAD_TYPE
    assert verify_decision(envelope, KEYS, "web-1") == d
    with pytest.raises(AssignmentRejected) as info:
        verify_assignment(envelope, KEYS, "web-1", 0)
    assert info.value.reason == "wrong_payload_type"


def test_one_online_signer_both_kinds_never_crossed() -> None:
    """``make_signer`` signs any Signable under the signable's own payload type: an assignment
    it signed verifies as an assignment and is refused as a decision, and the reverse."""
    from agent.fleet.approval import ApprovalDecision, DecisionRejected
    from agent.fleet.assignment import Assignment

    signer = make_signer(KEY)
    assignment = Assignment("web-1", "d" * 64, 3, 7, T0, "r1")
    signed = signer(assignment)
    assert verify_assignment(signed, KEYS, "web-1", 6) == assignment
    with pytest.raises(DecisionRejected) as refused:
        verify_decision(signed, KEYS, "web-1")
    assert refused.value.reason == "wrong_payload_type"
    decision = ApprovalDecision("web-1", "a1", "app", False, "bob", T0, T0 + 60, "cd" * 16)
    assert verify_decision(signer(decision), KEYS, "web-1") == decision
    with pytest.raises(AssignmentRejected, match="payloadType"):
        verify_assignment(signer(decision), KEYS, "web-1", 0)


def decide(plane: ControlPlane, host: str, policy: str, **kw: Any) -> approvals.DecideResult:
    ttl = kw.pop("ttl", None)
    return asyncio.run(approvals.decide(plane, host, policy, True, "alice", ttl, **kw))


def test_refusals_before_anything_is_sent(plane: ControlPlane) -> None:
    plane.db.insert_reports([report("web-1", 1, "pending", "a1")])
    with pytest.raises(NotFound, match="no host 'db-9'"):
        decide(plane, "db-9", "app")
    with pytest.raises(NotFound, match="no pending approval for 'disk' on web-1"):
        decide(plane, "web-1", "disk")
    with pytest.raises(InvalidRequest, match="at most"):
        decide(plane, "web-1", "app", ttl=86400.0)
    with pytest.raises(Refused, match="web-1 is not connected; the decision was not sent"):
        decide(plane, "web-1", "a1")


def test_a_connected_host_gets_a_signed_decision(plane: ControlPlane) -> None:
    plane.db.insert_reports([report("web-1", 1, "pending", "a1")])
    conn = plane.connections.open("web-1", {"env": "prod"})
    result = decide(plane, "web-1", "app", ttl=120.0, reason="INC-7", wait=0.3)
    assert (result.confirmed, result.by, result.approval_id) == (False, "cp:alice", "a1")
    assert "no answer from web-1" in result.message
    message: fleet_pb2.ControlMessage | None = conn.queue.get_nowait()
    assert message is not None and message.WhichOneof("body") == "approval_decision"
    sent = verify_decision(message.approval_decision.envelope, KEYS, "web-1")
    assert (sent.approval_id, sent.policy, sent.approve, sent.by) == ("a1", "app", True, "alice")
    assert (sent.issued_at, sent.expires_at, sent.reason) == (T0, T0 + 120.0, "INC-7")
    assert sent.nonce == result.nonce and len(sent.nonce) == 32


def streaming_to(plane: ControlPlane, host: str, replica: str, seen: float = T0) -> None:
    """The agents table says ``host`` streams to ``replica`` (as that replica writes it)."""
    plane.db.upsert_agent(
        AgentRecord(host, {"env": "prod"}, last_seen=seen, connected=True, replica=replica)
    )


def test_a_host_on_another_replica_gets_the_decision_through_its_pass(
    plane: ControlPlane,
) -> None:
    """web-1 streams to replica cp-b (same store, its own streams and delivery pass); deciding
    here queues the signed decision, cp-b's pass sends it on web-1's stream, and the agent's
    answer, stored by cp-b, confirms it here."""
    plane.db.insert_reports([report("web-1", 1, "pending", "a1")])
    streaming_to(plane, "web-1", "cp-b")
    [listed] = asyncio.run(approvals.pending(plane))
    assert listed.connected  # connected, though not here
    theirs = Connections()
    stream = theirs.open("web-1", {"env": "prod"})
    their_pass = Delivery(plane.store, theirs, plane.clock, "cp-b")

    async def agent_side() -> ApprovalDecision:
        """cp-b's passes until the decision reaches the stream, then the agent's report."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while stream.queue.empty():
            assert loop.time() < deadline, "cp-b's pass never sent the decision"
            await their_pass.deliver()
            await asyncio.sleep(0.05)
        message = stream.queue.get_nowait()
        assert message is not None
        sent = verify_decision(message.approval_decision.envelope, KEYS, "web-1")
        answer = report("web-1", 2, "approved", "a1", nonce=sent.nonce)
        await plane.store.run(plane.db.insert_reports, [answer])
        return sent

    async def both() -> tuple[approvals.DecideResult, ApprovalDecision]:
        agent = asyncio.create_task(agent_side())
        result = await approvals.decide(plane, "web-1", "app", True, "alice", 60.0, wait=10)
        return result, await agent

    result, sent = asyncio.run(both())
    assert (result.confirmed, result.outcome, result.via) == (True, "approved", "cp-b")
    assert (sent.nonce, sent.approval_id, sent.by, sent.expires_at) == (
        result.nonce,
        "a1",
        "alice",
        T0 + 60.0,
    )
    stored = plane.db.decision(result.nonce)
    assert stored is not None and (stored.queued_by, stored.delivered_by) == ("local", "cp-b")
    assert asyncio.run(their_pass.deliver()) == 0 and stream.queue.empty()  # once


def test_a_decision_no_replica_delivers_is_withdrawn_not_left_queued(plane: ControlPlane) -> None:
    plane.db.insert_reports([report("web-1", 1, "pending", "a1")])
    streaming_to(plane, "web-1", "cp-b")  # says cp-b, but cp-b's pass never runs
    with pytest.raises(Refused, match="did not deliver the decision within 0.3s; it was withdrawn"):
        decide(plane, "web-1", "a1", wait=0.3)
    assert plane.db.undelivered_decisions(T0) == []
    theirs = Connections()
    stream = theirs.open("web-1", {"env": "prod"})
    assert asyncio.run(Delivery(plane.store, theirs, plane.clock, "cp-b").deliver()) == 0
    assert stream.queue.empty()  # cp-b coming back later sends nothing


def test_connected_nowhere_is_refused_whatever_the_table_says(plane: ControlPlane) -> None:
    plane.db.insert_reports([report("web-1", 1, "pending", "a1")])
    refused = "web-1 is not connected; the decision was not sent"
    streaming_to(plane, "web-1", "local")  # this replica's own row, but no stream here
    with pytest.raises(Refused, match=refused):
        decide(plane, "web-1", "a1")
    streaming_to(plane, "web-1", "cp-b")
    plane.db.set_connected("web-1", False, T0, "cp-b")  # cp-b saw the stream end
    with pytest.raises(Refused, match=refused):
        decide(plane, "web-1", "a1")
    streaming_to(plane, "web-1", "cp-b")
    assert isinstance(plane.clock, FakeClock)
    plane.clock.advance(plane.settings.lost_after + 1)  # cp-b killed: its row still says so
    with pytest.raises(Refused, match=refused):
        decide(plane, "web-1", "a1")
    assert [p.connected for p in asyncio.run(approvals.pending(plane))] == [False]
    assert plane.db.undelivered_decisions(0.0) == []  # nothing was queued


def test_a_queued_decision_that_expires_unsent_is_refused(plane: ControlPlane) -> None:
    plane.db.insert_reports([report("web-1", 1, "pending", "a1")])
    streaming_to(plane, "web-1", "cp-b")

    async def expiring() -> None:
        task = asyncio.create_task(
            approvals.decide(plane, "web-1", "a1", True, "alice", 5.0, wait=0.5)
        )
        await asyncio.sleep(0.2)  # queued by now; the clock then passes its expiry
        assert isinstance(plane.clock, FakeClock)
        plane.clock.advance(10.0)
        await task

    with pytest.raises(Refused, match="expired .* before replica 'cp-b' delivered it"):
        asyncio.run(expiring())
    assert plane.db.undelivered_decisions(plane.clock.now()) == []  # never sent after this


def test_sent_through_another_replica_but_unanswered_is_unconfirmed(plane: ControlPlane) -> None:
    plane.db.insert_reports([report("web-1", 1, "pending", "a1")])
    streaming_to(plane, "web-1", "cp-b")
    theirs = Connections()
    stream = theirs.open("web-1", {"env": "prod"})
    their_pass = Delivery(plane.store, theirs, plane.clock, "cp-b")

    async def sent_unanswered() -> approvals.DecideResult:
        decided = asyncio.create_task(
            approvals.decide(plane, "web-1", "a1", False, "alice", 60.0, wait=1.0)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not await their_pass.deliver():
            assert loop.time() < deadline and not decided.done(), "never queued or sent"
            await asyncio.sleep(0.02)
        return await decided

    result = asyncio.run(sent_unanswered())
    assert (result.confirmed, result.decision, result.via) == (False, "reject", "cp-b")
    assert result.message == "sent through replica cp-b; no answer from web-1 within 1s"
    message = stream.queue.get_nowait()
    assert message is not None
    assert verify_decision(message.approval_decision.envelope, KEYS, "web-1").nonce == result.nonce
