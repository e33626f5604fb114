"""Signed assignments: only a pinned key, only this host, only a newer sequence."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.dsse import Envelope
from agent.bundle.keys import key_id
from agent.fleet.assignment import (
    ASSIGNMENT_PAYLOAD_TYPE,
    Assignment,
    AssignmentRejected,
    parse_payload,
    verify_assignment,
)
from controlplane import assignments as cp_assignments
from controlplane.keys import sign
from controlplane.storage.base import AssignmentPayload

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
DIGEST = "ab" * 32
A = Assignment("web-1", DIGEST, 3, seq=7, issued_at=1_800_000_000.0, rollout_id="r1")


def signed(assignment: Assignment = A, key: Ed25519PrivateKey = KEY) -> bytes:
    return sign(assignment.envelope(), key).to_json()


def rejected(data: bytes, host: str = "web-1", last_seq: int = 0) -> AssignmentRejected:
    with pytest.raises(AssignmentRejected) as info:
        verify_assignment(data, KEYS, host, last_seq)
    return info.value


def test_a_valid_assignment() -> None:
    assert verify_assignment(signed(), KEYS, "web-1", 6) == A


def test_the_sequence_must_go_up() -> None:
    for last in (7, 8, 100):
        error = rejected(signed(), last_seq=last)
        assert error.reason == "replayed" and error.seq == 7 and error.digest == DIGEST


def test_only_pinned_keys_count() -> None:
    assert rejected(signed(key=Ed25519PrivateKey.generate())).reason == "unknown_key"
    assert rejected(A.envelope().to_json()).reason == "unknown_key"  # unsigned
    with pytest.raises(AssignmentRejected, match="no assignment keys"):
        verify_assignment(signed(), {}, "web-1", 0)


def test_another_hosts_assignment_is_refused() -> None:
    assert rejected(signed(), host="web-2").reason == "wrong_host"


def test_the_payload_type_is_bound_into_the_signature() -> None:
    other = Envelope("application/vnd.stanch.bundle+json", A.to_payload())
    assert rejected(sign(other, KEY).to_json()).reason == "wrong_payload_type"
    # Relabelling a signed envelope breaks the signature (PAE covers the type).
    doc = json.loads(signed())
    doc["payloadType"] = ASSIGNMENT_PAYLOAD_TYPE + "x"
    assert rejected(json.dumps(doc).encode()).reason == "wrong_payload_type"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"host_id": "web-1"}',
        json.dumps({**json.loads(A.to_payload()), "seq": "7"}).encode(),
        json.dumps({**json.loads(A.to_payload()), "seq": 0}).encode(),
        json.dumps({**json.loads(A.to_payload()), "bundle_digest": "ABC"}).encode(),
        json.dumps({**json.loads(A.to_payload()), "bundle_version": True}).encode(),
    ],
)
def test_malformed_payloads(payload: bytes) -> None:
    data = sign(Envelope(ASSIGNMENT_PAYLOAD_TYPE, payload), KEY).to_json()
    assert rejected(data).reason == "malformed"
    assert rejected(b"{").reason == "malformed"


def test_both_ends_agree_on_the_signed_bytes() -> None:
    """The control plane's signer and the agent's verifier share one canonical encoding."""
    payload = AssignmentPayload("web-1", DIGEST, 3, 7, 1_800_000_000.0, "r1")
    data = cp_assignments.make_signer(KEY)(payload)
    assert verify_assignment(data, KEYS, "web-1", 0) == A
    assert Envelope.from_json(data).payload == A.to_payload()
    assert parse_payload(A.to_payload()) == A
