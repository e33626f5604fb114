"""Signed assignments: "host X should run bundle D; this is instruction number N".

The control plane signs each assignment with its own online key (TUF's timestamp/snapshot idea):
a DSSE envelope, payloadType :data:`ASSIGNMENT_PAYLOAD_TYPE`, over canonical JSON. The agent
accepts one only when

1. it is well-formed DSSE with that payload type (the type is bound into the signature by PAE);
2. one of the pinned assignment keys signed it (``keyid`` is a hint only; see ``dsse``);
3. it names this host (an assignment for another host cannot be replayed here);
4. its ``seq`` is higher than the highest this host ever accepted.

(4) is what makes a rollback safe without an offline key: rolling back is a *new* assignment with
a higher seq that points at an older, still operator-signed bundle; an attacker replaying the old
assignment that first installed that bundle is refused, because its seq is lower. The bundle
itself is still verified against the operator keys when it is installed.

Pure functions over bytes and keys: no network, no disk. ``cryptography`` is imported only by
:func:`verify_assignment`, which runs in the verifier child process (see ``verifier``), so the
long-lived agent can use :class:`Assignment` without mapping it in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.errors import StanchError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from agent.bundle.dsse import Envelope

ASSIGNMENT_PAYLOAD_TYPE = "application/vnd.stanch.assignment+json"
MAX_ASSIGNMENT_BYTES = 64 * 1024
_DIGEST = re.compile(r"[0-9a-f]{64}")


class AssignmentRejected(StanchError):
    """An assignment was refused; ``reason`` is a stable code for reports and health gates."""

    def __init__(self, reason: str, message: str, seq: int = 0, digest: str = "") -> None:
        self.reason = reason
        self.message = message
        self.seq = seq
        self.digest = digest
        super().__init__(f"assignment rejected ({reason}): {message}")


MALFORMED = "malformed"
WRONG_PAYLOAD_TYPE = "wrong_payload_type"
UNKNOWN_KEY = "unknown_key"
WRONG_HOST = "wrong_host"
TRUST_ERROR = "trust_error"
"""This host cannot check signatures (assignment keys or bundle trust missing or unreadable)."""
STALE_SEQ = "replayed"
"""Not higher than the last accepted sequence: a replay, or a control plane that lost state.
(The codes match ``controlplane.assignments``, so both ends speak one vocabulary.)"""


@dataclass(frozen=True)
class Assignment:
    host_id: str
    bundle_digest: str
    bundle_version: int
    seq: int
    issued_at: float
    rollout_id: str = ""

    def to_payload(self) -> bytes:
        """Canonical JSON (what the control plane signs)."""
        doc = {
            "host_id": self.host_id,
            "bundle_digest": self.bundle_digest,
            "bundle_version": self.bundle_version,
            "seq": self.seq,
            "issued_at": self.issued_at,
            "rollout_id": self.rollout_id,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def envelope(self) -> Envelope:
        """The unsigned envelope; the control plane adds its signature."""
        from agent.bundle.dsse import Envelope

        return Envelope(ASSIGNMENT_PAYLOAD_TYPE, self.to_payload())


def verify_assignment(
    data: bytes,
    keys: Mapping[str, Ed25519PublicKey],
    host_id: str,
    last_seq: int,
) -> Assignment:
    """Return the assignment in ``data`` (an envelope's JSON) or raise :class:`AssignmentRejected`.

    The payload is parsed only after a pinned key's signature checked out, so unauthenticated
    JSON never steers anything; the seq and digest of a refused one are filled in when known.
    """
    from agent.bundle.dsse import Envelope, EnvelopeError, verified_keyids

    if len(data) > MAX_ASSIGNMENT_BYTES:
        raise AssignmentRejected(MALFORMED, f"envelope over {MAX_ASSIGNMENT_BYTES} bytes")
    try:
        envelope = Envelope.from_json(data)
    except EnvelopeError as exc:
        raise AssignmentRejected(MALFORMED, str(exc)) from None
    if envelope.payload_type != ASSIGNMENT_PAYLOAD_TYPE:
        raise AssignmentRejected(
            WRONG_PAYLOAD_TYPE,
            f"payloadType {envelope.payload_type!r} is not {ASSIGNMENT_PAYLOAD_TYPE!r}",
        )
    if not keys:
        raise AssignmentRejected(UNKNOWN_KEY, "no assignment keys are pinned on this host")
    if not verified_keyids(envelope, keys):
        raise AssignmentRejected(
            UNKNOWN_KEY,
            f"no valid signature by a pinned assignment key ({len(envelope.signatures)} "
            "signature(s) present); is the control plane's key in assignment_keys?",
        )
    assignment = parse_payload(envelope.payload)
    if assignment.host_id != host_id:
        raise AssignmentRejected(
            WRONG_HOST,
            f"assignment is for host {assignment.host_id!r}, this is {host_id!r}",
            assignment.seq,
            assignment.bundle_digest,
        )
    if assignment.seq <= last_seq:
        raise AssignmentRejected(
            STALE_SEQ,
            f"seq {assignment.seq} is not above {last_seq}, the last this host accepted "
            "(a replayed or out-of-date assignment)",
            assignment.seq,
            assignment.bundle_digest,
        )
    return assignment


def parse_payload(payload: bytes) -> Assignment:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise AssignmentRejected(MALFORMED, "payload is not JSON") from None
    if not isinstance(doc, dict):
        raise AssignmentRejected(MALFORMED, "payload must be a JSON object")
    host = _field(doc, "host_id", str)
    digest = _field(doc, "bundle_digest", str)
    if not _DIGEST.fullmatch(digest):
        raise AssignmentRejected(MALFORMED, "bundle_digest must be 64 lowercase hex digits")
    version = _field(doc, "bundle_version", int)
    seq = _field(doc, "seq", int)
    if seq < 1:
        raise AssignmentRejected(MALFORMED, "seq must be a positive integer")
    issued = _field(doc, "issued_at", float)
    rollout = doc.get("rollout_id", "")
    if not isinstance(rollout, str):
        raise AssignmentRejected(MALFORMED, "rollout_id must be a string")
    return Assignment(host, digest, version, seq, issued, rollout)


def _field(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise AssignmentRejected(MALFORMED, f"{key} must be a {kind.__name__}")
    return value
