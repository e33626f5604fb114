"""DSSE: the PAE test vector from the spec, envelope parsing, threshold counting."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.dsse import MAX_SIGNATURES, Envelope, EnvelopeError, Signature, pae
from agent.bundle.keys import key_id
from agent.bundle.trust import TrustStore
from controlplane.keys import sign

TYPE = "application/vnd.stanch.bundle.manifest+json"


def test_pae_matches_the_dsse_spec_test_vector() -> None:
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters_and_handles_empty_payload() -> None:
    assert pae("t", b"") == b"DSSEv1 1 t 0 "
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


def test_pae_refuses_a_non_ascii_payload_type() -> None:
    with pytest.raises(UnicodeEncodeError):
        pae("application/ü", b"x")


def test_a_signature_verifies_and_survives_a_json_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    envelope = sign(Envelope(TYPE, b'{"a":1}'), key)
    parsed = Envelope.from_json(envelope.to_json())
    assert parsed == envelope
    trust = TrustStore.from_keys([key.public_key()], 1)
    assert trust.signers(parsed) == {key_id(key.public_key())}


def test_the_signature_covers_the_payload_type() -> None:
    key = Ed25519PrivateKey.generate()
    envelope = sign(Envelope(TYPE, b"{}"), key)
    swapped = Envelope("application/json", envelope.payload, envelope.signatures)
    assert TrustStore.from_keys([key.public_key()], 1).signers(swapped) == frozenset()


def test_keyid_is_only_a_hint_a_wrong_hint_still_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    good = sign(Envelope(TYPE, b"{}"), key).signatures[0]
    hinted = Envelope(TYPE, b"{}", (Signature("not-the-right-id", good.sig),))
    assert TrustStore.from_keys([key.public_key()], 1).signers(hinted) == {key_id(key.public_key())}


def test_a_hint_naming_a_pinned_key_proves_nothing() -> None:
    pinned, attacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    forged = attacker.sign(pae(TYPE, b"{}"))
    envelope = Envelope(TYPE, b"{}", (Signature(key_id(pinned.public_key()), forged),))
    assert TrustStore.from_keys([pinned.public_key()], 1).signers(envelope) == frozenset()


def test_a_key_signing_twice_counts_once() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first = sign(Envelope(TYPE, b"{}"), a).signatures[0]
    # Ed25519 is deterministic, so vary the hint: two entries, one key.
    twice = Envelope(TYPE, b"{}", (first, Signature("copy", first.sig)))
    trust = TrustStore.from_keys([a.public_key(), b.public_key()], 2)
    assert len(trust.signers(twice)) == 1


def test_signing_again_with_the_same_key_replaces_its_signature() -> None:
    key = Ed25519PrivateKey.generate()
    envelope = sign(sign(Envelope(TYPE, b"{}"), key), key)
    assert len(envelope.signatures) == 1


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ([], "JSON object"),
        ({"payloadType": TYPE, "payload": "%%%", "signatures": []}, "base64"),
        ({"payloadType": 5, "payload": "", "signatures": []}, "payloadType"),
        ({"payloadType": "ü", "payload": "", "signatures": []}, "ASCII"),
        ({"payloadType": TYPE, "payload": "", "signatures": {}}, "list"),
        ({"payloadType": TYPE, "payload": "", "signatures": ["x"]}, "object"),
        ({"payloadType": TYPE, "payload": "", "signatures": [{"keyid": 1, "sig": ""}]}, "keyid"),
        (
            {"payloadType": TYPE, "payload": "", "signatures": [{"sig": "AA=="}] * 17},
            f"more than {MAX_SIGNATURES}",
        ),
    ],
)
def test_malformed_envelopes_are_refused_with_the_field(doc: object, problem: str) -> None:
    with pytest.raises(EnvelopeError, match=problem):
        Envelope.from_json(json.dumps(doc).encode())


def test_url_safe_base64_is_accepted_as_the_spec_allows() -> None:
    payload = b"\xfb\xff\xfe"
    doc = {"payloadType": TYPE, "payload": base64.urlsafe_b64encode(payload).decode()}
    assert Envelope.from_json(json.dumps(doc).encode()).payload == payload
