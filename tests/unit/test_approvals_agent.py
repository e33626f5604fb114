"""Central approval decisions on the agent: only the control plane's key, only this host, only
fresh, only once; and approval changes reported upstream exactly once.

Real Ed25519 keys, a real journal and outbox on disk, an injected clock. The in-process verifier
is the same function the verifier child runs; one test runs the child itself.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.keys import key_id, public_pem
from agent.clock import FakeClock
from agent.fleet.approval import (
    DECISION_PAYLOAD_TYPE,
    ApprovalDecision,
    ApprovalReports,
    DecisionApplier,
    DecisionRejected,
    child_verifier,
    verify_decision,
)
from agent.fleet.assignment import Assignment, AssignmentRejected, verify_assignment
from agent.fleet.outbox import Outbox
from agent.journal import Journal
from controlplane.keys import sign

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
HOST = "web-1"
T0 = 1_800_000_000.0


def decision(approval_id: str, approve: bool = True, **changes: object) -> ApprovalDecision:
    fields: dict[str, object] = {
        "host_id": HOST,
        "approval_id": approval_id,
        "policy": "app",
        "approve": approve,
        "by": "alice",
        "issued_at": T0,
        "expires_at": T0 + 300,
        "nonce": "0f" * 16,
        "reason": "ticket 42",
    }
    fields.update(changes)
    return ApprovalDecision(**fields)  # type: ignore[arg-type]


def signed(d: ApprovalDecision, key: Ed25519PrivateKey = KEY) -> bytes:
    return sign(d.envelope(), key).to_json()


def refused(data: bytes, host: str = HOST) -> DecisionRejected:
    with pytest.raises(DecisionRejected) as info:
        verify_decision(data, KEYS, host)
    return info.value


class Host:
    """A journal with an approval waiting, its outbox, and an applier with in-process checks."""

    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock(T0)
        self.journal = Journal(tmp / "state.db")
        self.outbox = Outbox(self.journal, 1000, self.clock)
        self.journal.reporter = self.outbox
        self.reports = ApprovalReports(self.journal, self.outbox)
        self.applier = DecisionApplier(
            HOST,
            self.journal,
            self.outbox,
            self.reports,
            self.clock,
            lambda data: verify_decision(data, KEYS, HOST),
        )

    def ask(self, policy: str = "app", ttl: float = 600.0, scan: bool = True) -> str:
        """What the runner does in approve mode: the approval, then the decision row; then
        (``scan``) what the fleet client's reporter does next."""
        now = self.clock.now()
        approval_id = self.journal.create_approval(policy, now, now + ttl, "approve mode: 1 step")
        self.journal.record_decision(
            policy,
            now,
            "awaiting_approval",
            "approval_needed",
            "approve mode: 1 step",
            {"beat": {"age_seconds": 120.0}},
            ["beat.age_seconds 120 > 30"],
            now + ttl,
        )
        if scan:
            self.reports.scan(now)
        return approval_id

    def approval_reports(self) -> list[tuple[str, str, dict[str, object]]]:
        rows = self.outbox.pending(0, 1000)
        return [(r.outcome, r.reason, json.loads(r.body)) for r in rows if r.kind == "approval"]

    def status(self, approval_id: str) -> tuple[str, str]:
        row = next(r for r in self.journal.approvals(None) if r["id"] == approval_id)
        return str(row["status"]), str(row["decided_by"])


# ---- the envelope ------------------------------------------------------------------------------


def test_a_valid_decision_round_trips() -> None:
    d = decision("ab12cd34")
    assert verify_decision(signed(d), KEYS, HOST) == d


def test_a_forged_decision_is_refused() -> None:
    error = refused(signed(decision("ab12cd34"), key=Ed25519PrivateKey.generate()))
    assert error.reason == "unknown_key"


def test_a_tampered_payload_is_refused() -> None:
    doc = json.loads(signed(decision("ab12cd34", approve=False)))
    payload = json.loads(base64.b64decode(doc["payload"]))
    payload["decision"] = "approve"
    doc["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    assert refused(json.dumps(doc).encode()).reason == "unknown_key"


def test_another_hosts_decision_is_refused() -> None:
    assert refused(signed(decision("ab12cd34")), host="web-2").reason == "wrong_host"


def test_an_assignment_and_a_decision_cannot_pass_for_each_other() -> None:
    assignment = Assignment(HOST, "ab" * 32, 1, seq=9, issued_at=T0)
    as_decision = refused(sign(assignment.envelope(), KEY).to_json())
    assert as_decision.reason == "wrong_payload_type"
    with pytest.raises(AssignmentRejected) as info:
        verify_assignment(signed(decision("ab12cd34")), KEYS, HOST, 0)
    assert info.value.reason == "wrong_payload_type"
    assert DECISION_PAYLOAD_TYPE != "application/vnd.stanch.assignment+json"


def test_malformed_payloads_are_named() -> None:
    cases: list[tuple[str, dict[str, object]]] = [
        ("ab12cd34", {"nonce": "short"}),
        ("ab12cd34", {"by": ""}),
        ("", {}),
    ]
    for approval_id, bad in cases:
        assert refused(signed(decision(approval_id, True, **bad))).reason == "malformed"


# ---- applying ----------------------------------------------------------------------------------


def test_approve_applies_through_the_journal_and_reports_the_nonce(tmp_path: Path) -> None:
    host = Host(tmp_path)
    approval_id = host.ask()
    outcome = host.applier.apply(signed(decision(approval_id)))
    assert outcome.applied, outcome
    assert host.status(approval_id) == ("approved", "cp:alice")
    reports = host.approval_reports()
    assert [r[0] for r in reports] == ["pending", "approved"]
    pending, approved = reports[0][2], reports[1][2]
    assert pending["observed"] == {"beat": {"age_seconds": 120.0}}
    assert pending["expires_at"] == T0 + 600
    assert approved["nonce"] == "0f" * 16 and approved["decided_by"] == "cp:alice"


def test_a_decision_before_any_scan_is_reported_once_with_everything(tmp_path: Path) -> None:
    host = Host(tmp_path)
    approval_id = host.ask(scan=False)
    assert host.applier.apply(signed(decision(approval_id))).applied
    [(outcome, by, body)] = host.approval_reports()
    assert (outcome, by, body["created_at"], body["nonce"]) == (
        "approved",
        "cp:alice",
        T0,
        "0f" * 16,
    )


def test_reject_is_recorded_as_rejected(tmp_path: Path) -> None:
    host = Host(tmp_path)
    approval_id = host.ask()
    assert host.applier.apply(signed(decision(approval_id, approve=False))).applied
    assert host.status(approval_id) == ("rejected", "cp:alice")
    assert [r[0] for r in host.approval_reports()] == ["pending", "rejected"]


def test_a_replayed_decision_is_refused_even_for_a_new_approval(tmp_path: Path) -> None:
    host = Host(tmp_path)
    first = host.ask()
    envelope = signed(decision(first, approve=False))
    assert host.applier.apply(envelope).applied
    again = host.applier.apply(envelope)
    assert (again.applied, again.reason) == (False, "replayed")
    # A new request for the same policy: the captured decision is still spent.
    host.clock.advance(5)
    assert host.applier.apply(envelope).reason == "replayed"
    refusals = [r for r in host.approval_reports() if r[0] == "refused"]
    assert [r[1] for r in refusals] == ["replayed", "replayed"]
    assert refusals[0][2]["nonce"] == "0f" * 16


def test_the_nonce_survives_a_restart(tmp_path: Path) -> None:
    host = Host(tmp_path)
    approval_id = host.ask()
    envelope = signed(decision(approval_id))
    assert host.applier.apply(envelope).applied
    host.journal.close()
    restarted = Host(tmp_path)
    assert restarted.applier.apply(envelope).reason == "replayed"


def test_an_expired_decision_is_refused(tmp_path: Path) -> None:
    host = Host(tmp_path)
    approval_id = host.ask()
    host.clock.advance(301)
    outcome = host.applier.apply(signed(decision(approval_id)))
    assert (outcome.applied, outcome.reason) == (False, "expired")
    assert host.status(approval_id) == ("pending", "")


def test_a_decision_from_the_future_or_valid_too_long_is_refused(tmp_path: Path) -> None:
    host = Host(tmp_path)
    approval_id = host.ask()
    ahead = decision(approval_id, issued_at=T0 + 900, expires_at=T0 + 1000)
    assert host.applier.apply(signed(ahead)).reason == "not_yet_valid"
    long = decision(approval_id, nonce="1f" * 16, expires_at=T0 + 86400)
    assert host.applier.apply(signed(long)).reason == "malformed"


def test_an_expired_approval_is_refused_and_reported_expired(tmp_path: Path) -> None:
    host = Host(tmp_path)
    approval_id = host.ask(ttl=60)
    host.clock.advance(61)
    fresh = decision(approval_id, issued_at=host.clock.now(), expires_at=host.clock.now() + 60)
    outcome = host.applier.apply(signed(fresh))
    assert (outcome.applied, outcome.reason) == (False, "not_pending")
    assert "expired" in outcome.message
    assert host.status(approval_id)[0] == "expired"
    assert [r[0] for r in host.approval_reports()] == ["pending", "refused", "expired"]


def test_a_decision_naming_another_policy_is_refused(tmp_path: Path) -> None:
    host = Host(tmp_path)
    approval_id = host.ask(policy="disk")
    outcome = host.applier.apply(signed(decision(approval_id)))
    assert outcome.reason == "wrong_policy"
    assert host.status(approval_id) == ("pending", "")


def test_a_forged_decision_is_refused_and_reported(tmp_path: Path) -> None:
    host = Host(tmp_path)
    approval_id = host.ask()
    forged = signed(decision(approval_id), key=Ed25519PrivateKey.generate())
    assert host.applier.apply(forged).reason == "unknown_key"
    assert host.status(approval_id) == ("pending", "")
    assert [r[:2] for r in host.approval_reports()][-1] == ("refused", "unknown_key")


# ---- reporting ---------------------------------------------------------------------------------


def test_each_change_is_reported_once_across_restarts(tmp_path: Path) -> None:
    host = Host(tmp_path)
    approval_id = host.ask(scan=False)
    assert host.reports.scan(host.clock.now()) == 1
    assert host.reports.scan(host.clock.now()) == 0
    host.journal.decide_approval(approval_id, True, "bob", host.clock.now())
    host.journal.close()
    host = Host(tmp_path)  # a restarted agent: what was reported is in agent_state
    assert host.reports.scan(host.clock.now()) == 1
    execution = host.journal.begin_execution("app", host.clock.now(), None, {}, approval_id)
    assert host.reports.scan(host.clock.now()) == 1
    assert host.reports.scan(host.clock.now()) == 0
    outcomes = [(r[0], r[1], r[2]["execution_id"]) for r in host.approval_reports()]
    assert outcomes == [("pending", "", None), ("approved", "bob", None), ("used", "", execution)]


def test_a_pending_approval_past_its_expiry_is_reported_expired(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.ask(ttl=60)
    host.clock.advance(61)
    assert host.reports.scan(host.clock.now()) == 1
    assert [r[0] for r in host.approval_reports()] == ["pending", "expired"]


def test_the_child_verifier_checks_the_signature(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "cp.pub").write_bytes(public_pem(KEY.public_key()))
    verify = child_verifier(keys, HOST)
    d = decision("ab12cd34")
    assert verify(signed(d)) == d
    with pytest.raises(DecisionRejected) as info:
        verify(signed(d, key=Ed25519PrivateKey.generate()))
    assert info.value.reason == "unknown_key"
    with pytest.raises(DecisionRejected) as info:
        child_verifier(tmp_path / "missing", HOST)(signed(d))
    assert info.value.reason == "trust_error"
