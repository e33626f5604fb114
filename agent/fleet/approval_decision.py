"""A central approval decision: what the control plane signs, and the agent's checks of it.

An operator's approve/reject reaches the agent as a DSSE envelope signed by the control plane's
online key (the assignment key, pinned in ``assignment_keys``) under its own payload type,
:data:`DECISION_PAYLOAD_TYPE`: an assignment can never pass for a decision, nor a decision for an
assignment (PAE binds the type into the signature). :func:`verify_decision` checks the signature,
type and host; :func:`check_fresh` the time window. Replay and the approval's state need the
journal: ``agent.fleet.approval.DecisionApplier``. Pure: no clock, no storage, and
``cryptography`` only inside :func:`verify_decision` (run in the child verifier).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.errors import StanchError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from agent.bundle.dsse import Envelope

DECISION_PAYLOAD_TYPE = "application/vnd.stanch.approval-decision+json"
KIND = "approval"
"""The report kind for approval changes and for central decisions the agent refused."""
REFUSED = "refused"
MAX_DECISION_BYTES = 16 * 1024
MAX_SKEW = 300.0
"""A decision issued this far in this host's future is still taken (clocks drift)."""
MAX_VALIDITY = 3600.0
_NONCE = re.compile(r"[0-9a-f]{32}")

# Refusal codes (reports, logs and the control plane's answer to its operator).
MALFORMED = "malformed"
WRONG_PAYLOAD_TYPE = "wrong_payload_type"
UNKNOWN_KEY = "unknown_key"
WRONG_HOST = "wrong_host"
TRUST_ERROR = "trust_error"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
REPLAYED = "replayed"
NOT_PENDING = "not_pending"
WRONG_POLICY = "wrong_policy"
VERIFIER_FAILED = "verifier_failed"


class DecisionRejected(StanchError):
    """A central decision was refused; ``reason`` is one of the codes above."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"approval decision refused ({reason}): {message}")


@dataclass(frozen=True)
class ApprovalDecision:
    host_id: str
    approval_id: str
    policy: str
    approve: bool
    by: str
    """The operator, as the control plane authenticated them (recorded as ``cp:<by>``)."""
    issued_at: float
    expires_at: float
    nonce: str
    """32 lowercase hex digits, random: used once."""
    reason: str = ""

    @property
    def decision(self) -> str:
        return "approve" if self.approve else "reject"

    def to_payload(self) -> bytes:
        """Canonical JSON (what the control plane signs)."""
        doc = {
            "host_id": self.host_id,
            "approval_id": self.approval_id,
            "policy": self.policy,
            "decision": self.decision,
            "by": self.by,
            "reason": self.reason,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "nonce": self.nonce,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def envelope(self) -> Envelope:
        """The unsigned envelope; the control plane adds its signature."""
        from agent.bundle.dsse import Envelope

        return Envelope(DECISION_PAYLOAD_TYPE, self.to_payload())


def verify_decision(
    data: bytes, keys: Mapping[str, Ed25519PublicKey], host_id: str
) -> ApprovalDecision:
    """The decision in ``data`` (an envelope's JSON) if a pinned key signed it for this host;
    else :class:`DecisionRejected`. Freshness and replay are :func:`check_fresh` and the applier's
    (they need a clock and state). The payload is parsed only after the signature checked out."""
    from agent.bundle.dsse import Envelope, EnvelopeError, verified_keyids

    if len(data) > MAX_DECISION_BYTES:
        raise DecisionRejected(MALFORMED, f"envelope over {MAX_DECISION_BYTES} bytes")
    try:
        envelope = Envelope.from_json(data)
    except EnvelopeError as exc:
        raise DecisionRejected(MALFORMED, str(exc)) from None
    if envelope.payload_type != DECISION_PAYLOAD_TYPE:
        raise DecisionRejected(
            WRONG_PAYLOAD_TYPE,
            f"payloadType {envelope.payload_type!r} is not {DECISION_PAYLOAD_TYPE!r}",
        )
    if not keys:
        raise DecisionRejected(UNKNOWN_KEY, "no assignment keys are pinned on this host")
    if not verified_keyids(envelope, keys):
        raise DecisionRejected(
            UNKNOWN_KEY,
            "no valid signature by a pinned assignment key; is the control plane's key in "
            "assignment_keys?",
        )
    decision = parse_payload(envelope.payload)
    if decision.host_id != host_id:
        raise DecisionRejected(
            WRONG_HOST, f"decision is for host {decision.host_id!r}, this is {host_id!r}"
        )
    return decision


def check_fresh(decision: ApprovalDecision, now: float) -> None:
    if decision.expires_at - decision.issued_at > MAX_VALIDITY:
        raise DecisionRejected(
            MALFORMED, f"valid for more than {MAX_VALIDITY:g}s; the control plane must not ask that"
        )
    if decision.issued_at > now + MAX_SKEW:
        raise DecisionRejected(
            NOT_YET_VALID,
            f"issued {decision.issued_at - now:.0f}s in this host's future; check both clocks",
        )
    if decision.expires_at <= now:
        raise DecisionRejected(
            EXPIRED, f"expired {now - decision.expires_at:.0f}s ago; decide again"
        )


def parse_payload(payload: bytes) -> ApprovalDecision:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise DecisionRejected(MALFORMED, "payload is not JSON") from None
    if not isinstance(doc, dict):
        raise DecisionRejected(MALFORMED, "payload must be a JSON object")
    text = {k: doc.get(k) for k in ("host_id", "approval_id", "policy", "by", "reason", "nonce")}
    for key, value in text.items():
        if not isinstance(value, str) or (key != "reason" and not value):
            raise DecisionRejected(MALFORMED, f"{key} must be a non-empty string")
    if not _NONCE.fullmatch(str(text["nonce"])):
        raise DecisionRejected(MALFORMED, "nonce must be 32 lowercase hex digits")
    decision = doc.get("decision")
    if decision not in ("approve", "reject"):
        raise DecisionRejected(MALFORMED, "decision must be 'approve' or 'reject'")
    times: list[float] = []
    for key in ("issued_at", "expires_at"):
        value = doc.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise DecisionRejected(MALFORMED, f"{key} must be a number")
        times.append(float(value))
    return ApprovalDecision(
        host_id=str(text["host_id"]),
        approval_id=str(text["approval_id"]),
        policy=str(text["policy"]),
        approve=decision == "approve",
        by=str(text["by"]),
        issued_at=times[0],
        expires_at=times[1],
        nonce=str(text["nonce"]),
        reason=str(text["reason"]),
    )
