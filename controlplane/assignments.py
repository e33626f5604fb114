"""Signed assignments: "host X should run bundle D, sequence N", signed by the control plane.

The envelope is DSSE (the same code as bundles), payloadType :data:`PAYLOAD_TYPE`, signed with the
control plane's *online* Ed25519 key (``--assignment-key``), never an operator's offline release
key: the control plane must be able to order a rollback at 3 AM with no human present. That key
can only point a host at bundles the operators already signed, and the agent still verifies the
bundle itself; what the key adds is *which* signed bundle, and *when* (the sequence).

:func:`verify_assignment` is the reference check an agent applies (the agent keeps its own copy,
since ``agent/`` never imports ``controlplane/``): the right type, a pinned key, this host, and a
sequence strictly above the last one accepted, so a captured older assignment cannot be replayed
to roll a host back. See docs/control-plane.md for the threat model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.bundle.dsse import Envelope, EnvelopeError, verified_keyids
from controlplane.errors import Refused
from controlplane.keys import sign
from controlplane.storage.base import AssignmentPayload, Signer

PAYLOAD_TYPE = "application/vnd.stanch.assignment+json"
FIELDS = ("host_id", "bundle_digest", "bundle_version", "seq", "issued_at", "rollout_id")


class AssignmentRejected(Refused):
    """An agent must not act on this assignment; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"assignment rejected ({reason}): {message}")


def payload_bytes(payload: AssignmentPayload) -> bytes:
    """Canonical JSON (sorted keys, no spaces): one assignment, one byte string."""
    doc = {name: getattr(payload, name) for name in FIELDS}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def make_signer(key: Ed25519PrivateKey) -> Signer:
    def sign_assignment(payload: AssignmentPayload) -> bytes:
        return sign(Envelope(PAYLOAD_TYPE, payload_bytes(payload)), key).to_json()

    return sign_assignment


def verify_assignment(
    data: bytes, keys: Mapping[str, Ed25519PublicKey], host_id: str, last_seq: int
) -> AssignmentPayload:
    """The payload of a valid assignment for ``host_id`` newer than ``last_seq``, or raise."""
    try:
        envelope = Envelope.from_json(data)
    except EnvelopeError as exc:
        raise AssignmentRejected("malformed", str(exc)) from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise AssignmentRejected("wrong_payload_type", f"payloadType {envelope.payload_type!r}")
    if not verified_keyids(envelope, keys):
        raise AssignmentRejected("unknown_key", "no signature verifies with a pinned key")
    payload = parse_payload(envelope.payload)
    if payload.host_id != host_id:
        raise AssignmentRejected(
            "wrong_host", f"assignment is for {payload.host_id!r}, this host is {host_id!r}"
        )
    if payload.seq <= last_seq:
        raise AssignmentRejected(
            "replayed",
            f"sequence {payload.seq} is not above {last_seq}, the last one accepted",
        )
    return payload


def parse_payload(raw: bytes) -> AssignmentPayload:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AssignmentRejected("malformed", "payload is not JSON") from None
    if not isinstance(doc, dict):
        raise AssignmentRejected("malformed", "payload must be a JSON object")
    kinds: dict[str, tuple[type, ...]] = {
        "host_id": (str,),
        "bundle_digest": (str,),
        "bundle_version": (int,),
        "seq": (int,),
        "issued_at": (int, float),
        "rollout_id": (str,),
    }
    for name, allowed in kinds.items():
        value = doc.get(name)
        if not isinstance(value, allowed) or isinstance(value, bool):
            raise AssignmentRejected("malformed", f"{name} is missing or has the wrong type")
    return AssignmentPayload(
        doc["host_id"],
        doc["bundle_digest"],
        doc["bundle_version"],
        doc["seq"],
        float(doc["issued_at"]),
        doc["rollout_id"],
    )
