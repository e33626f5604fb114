"""Signing assignments: "host X should run bundle D, sequence N", with the control plane's key.

The format and the check are the agent's (``agent.fleet.assignment``: one definition of what is
signed, imported here, never copied): a DSSE envelope, payloadType
``application/vnd.stanch.assignment+json``, over canonical JSON. This module adds the one thing
the agent must never have, the signing side.

The key is the control plane's *online* Ed25519 key (``--assignment-key``), not an operator's
offline release key: the control plane must be able to order a rollback at 3 AM with no human
present. That key can only point a host at bundles the operators already signed (the agent still
verifies the bundle itself against its pinned operator keys, and expiry bounds how old); what it
adds is *which* signed bundle and *when*, the sequence that makes a captured older assignment
useless for rolling a host back. See docs/control-plane.md.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.fleet.assignment import ASSIGNMENT_PAYLOAD_TYPE, Assignment, verify_assignment
from controlplane.keys import sign
from controlplane.storage.base import Signable, Signer

PAYLOAD_TYPE = ASSIGNMENT_PAYLOAD_TYPE


def make_signer(key: Ed25519PrivateKey) -> Signer:
    """A function from a :class:`Signable` (an assignment, or an approval decision from
    ``controlplane.approvals``) to its signed envelope (JSON bytes, as sent on the wire). The
    envelope, payload type included, is the signable's own: the signature covers the type, so an
    agent never takes one kind for the other."""

    def sign_online(item: Signable) -> bytes:
        return sign(item.envelope(), key).to_json()

    return sign_online


__all__ = ["PAYLOAD_TYPE", "Assignment", "Signable", "make_signer", "verify_assignment"]
