"""DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1.0), verify side.

Why hand-written rather than securesystemslib: the protocol is small (PAE below is five fields),
the agent already depends on ``cryptography`` for Ed25519, and the one decision that matters for
security, *which* keys count toward a threshold, is ours to make: every signature is tried against
every pinned key (``keyid`` only orders the attempts) and each key counts once however many
signatures it made. ``tests/unit/test_bundle_dsse.py`` pins PAE to the spec's test vector.

The agent never signs: the signing half lives in ``controlplane.keys``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_SIGNATURES = 16
"""More signatures than this is an attack on verification time, not a release process."""
MAX_ENVELOPE_BYTES = 4 << 20


class EnvelopeError(ValueError):
    """The envelope is not well-formed DSSE JSON."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding: what is actually signed.

    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, lengths as ASCII decimal byte counts.
    Binding the type into the signed bytes is what makes a swapped ``payloadType`` fail.
    """
    kind = payload_type.encode("ascii")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    """A hint only: which key the signer says it used. Never trusted on its own."""
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...] = ()

    def signing_input(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def with_signature(self, signature: Signature) -> Envelope:
        """A copy with ``signature`` added (replacing an earlier one with the same keyid)."""
        others = tuple(s for s in self.signatures if s.keyid != signature.keyid)
        return Envelope(self.payload_type, self.payload, (*others, signature))

    def to_json(self) -> bytes:
        doc = {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        if len(data) > MAX_ENVELOPE_BYTES:
            raise EnvelopeError(f"envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeError(f"envelope is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise EnvelopeError("envelope must be a JSON object")
        payload_type = doc.get("payloadType")
        if not isinstance(payload_type, str) or not payload_type.isascii():
            raise EnvelopeError("payloadType must be an ASCII string")
        payload = _b64(doc.get("payload"), "payload")
        raw_sigs = doc.get("signatures", [])
        if not isinstance(raw_sigs, list):
            raise EnvelopeError("signatures must be a list")
        if len(raw_sigs) > MAX_SIGNATURES:
            raise EnvelopeError(f"more than {MAX_SIGNATURES} signatures")
        sigs = []
        for index, raw in enumerate(raw_sigs):
            if not isinstance(raw, dict):
                raise EnvelopeError(f"signatures[{index}] must be an object")
            keyid = raw.get("keyid", "")
            if not isinstance(keyid, str):
                raise EnvelopeError(f"signatures[{index}].keyid must be a string")
            sigs.append(Signature(keyid, _b64(raw.get("sig"), f"signatures[{index}].sig")))
        return cls(payload_type, payload, tuple(sigs))


def _b64(value: object, where: str) -> bytes:
    """Standard base64 with padding, or its URL-safe variant (the spec allows either)."""
    if not isinstance(value, str) or not value.isascii():
        raise EnvelopeError(f"{where} must be a base64 string")
    alphabet = b"-_" if ("-" in value or "_" in value) else b"+/"
    try:
        return base64.b64decode(value, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"{where} is not valid base64") from None


def verified_keyids(envelope: Envelope, keys: Mapping[str, Ed25519PublicKey]) -> frozenset[str]:
    """The ids of the pinned ``keys`` that produced at least one valid signature.

    Each signature is tried against the key its ``keyid`` names first, then against every other
    pinned key: a wrong or missing hint costs a few verifications, never a rejection, and a hint
    naming a pinned key proves nothing until the signature checks out. The result is a set, so a
    key that signed twice counts once toward the threshold.
    """
    message = envelope.signing_input()
    found: set[str] = set()
    for signature in envelope.signatures:
        order = sorted(keys, key=lambda kid: kid != signature.keyid)
        for keyid in order:
            if keyid in found:
                continue
            try:
                keys[keyid].verify(signature.sig, message)
            except InvalidSignature:
                continue
            found.add(keyid)
            break
    return frozenset(found)
