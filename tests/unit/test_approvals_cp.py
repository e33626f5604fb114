"""``controlplane.approvals`` on a real ControlPlane over real SQLite (not started: no server).

What the list is made of (the newest approval report per host and id), how a decision is signed
(its own payload type, the assignment key), and every refusal before anything is sent.
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
from agent.fleet.approval import DECISION_PAYLOAD_TYPE, verify_decision
from agent.fleet.assignment import AssignmentRejected, verify_assignment
from controlplane import approvals
from controlplane.assignments import make_signer
from controlplane.bundle_fixtures import KeyRing
from controlplane.errors import InvalidRequest, NotFound, Refused
from controlplane.plane import ControlPlane
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
