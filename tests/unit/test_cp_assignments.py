"""The assignment threat model, end to end through storage: a rollback is a newer assignment;
replaying the older one that first installed a bundle is refused by the agent's own check."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.keys import key_id
from agent.fleet.assignment import (
    STALE_SEQ,
    UNKNOWN_KEY,
    WRONG_HOST,
    Assignment,
    AssignmentRejected,
    verify_assignment,
)
from controlplane.assignments import PAYLOAD_TYPE, make_signer
from controlplane.storage.base import AgentRecord, AssignmentRequest
from controlplane.storage.sqlite import SqliteStorage

KEY = Ed25519PrivateKey.generate()
PINNED = {key_id(KEY.public_key()): KEY.public_key()}
V1, V2 = "1" * 64, "2" * 64


def test_rollback_is_newer_and_the_old_assignment_cannot_be_replayed(tmp_path: Path) -> None:
    db = SqliteStorage(tmp_path / "cp.db")
    sign = make_signer(KEY)
    db.upsert_agent(AgentRecord("web-1", {}))
    (install_v1,) = db.issue_assignments([AssignmentRequest("web-1", V1, 1, "r1")], 1.0, sign)
    (upgrade,) = db.issue_assignments([AssignmentRequest("web-1", V2, 2, "r2")], 2.0, sign)
    (rollback,) = db.issue_assignments([AssignmentRequest("web-1", V1, 1, "r2")], 3.0, sign)

    seen = 0
    for record in (install_v1, upgrade, rollback):
        seen = verify_assignment(record.envelope, PINNED, "web-1", seen).seq
    assert seen == rollback.seq and rollback.seq > upgrade.seq > install_v1.seq
    with pytest.raises(AssignmentRejected) as replay:  # an attacker replays "install v2"
        verify_assignment(upgrade.envelope, PINNED, "web-1", seen)
    assert replay.value.reason == STALE_SEQ
    with pytest.raises(AssignmentRejected) as elsewhere:  # or aims it at another host
        verify_assignment(rollback.envelope, PINNED, "web-2", 0)
    assert elsewhere.value.reason == WRONG_HOST
    other = Ed25519PrivateKey.generate()
    with pytest.raises(AssignmentRejected) as forged:
        forged_rollback = Assignment("web-1", V1, 1, rollback.seq + 1, 4.0, "evil")
        verify_assignment(make_signer(other)(forged_rollback), PINNED, "web-1", seen)
    assert forged.value.reason == UNKNOWN_KEY
    assert PAYLOAD_TYPE == "application/vnd.stanch.assignment+json"
