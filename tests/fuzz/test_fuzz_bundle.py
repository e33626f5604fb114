"""Fuzz the bundle verifier: any input ends in :class:`BundleRejected` (a named reason) or in
exactly the original signed content, never in another exception, never in tampered content.

The valid bundle holds two policies and a script, signed by keys 0 and 1 of three pinned keys
with a threshold of 2; key 3 is not pinned (the forger's). Four input shapes:

- **bytes**: 1-3 stacked byte mutations of the whole bundle file (flip, truncate, insert, delete,
  overwrite, move a 512-byte tar block);
- **DSSE envelope**: the envelope re-encoded canonically and the archive re-packed around it,
  so the mutation gets past the canonical-form check to the signature checks: payload edited
  (bytes, or its JSON fields: version, expiry, a file's hash) without re-signing, payloadType
  changed, signatures dropped, duplicated (one key twice must not meet a threshold of 2),
  swapped, corrupted, re-hinted, or added by the unpinned key over the edited payload;
- **raw envelope JSON**: the envelope document with fields removed, retyped or added;
- **files**: the archive re-packed with a file's bytes changed, a file added or removed.

Accepted means: the same manifest and files as the original, and at least two distinct pinned
signers. (DSSE's keyid is an unauthenticated hint: a changed hint alone may be accepted.)
"""

from __future__ import annotations

import base64
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzzing import FUZZ, count
from hypothesis import assume, given
from hypothesis import strategies as st

from agent.bundle import BundleRejected
from agent.bundle.archive import read_archive, write_archive
from agent.bundle.dsse import Envelope, Signature
from agent.bundle.trust import TrustStore
from agent.bundle.verify import VerifiedBundle, parse_envelope, verify_bundle
from controlplane.bundle_fixtures import T0, KeyRing, make_bundle, policy_text, write_source
from controlplane.keys import sign

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(600)]


@functools.cache
def valid() -> tuple[bytes, TrustStore, VerifiedBundle, Ed25519PrivateKey]:
    ring = KeyRing.generate(4)
    with tempfile.TemporaryDirectory() as tmp:
        source = write_source(
            Path(tmp) / "p", {"a.yaml": policy_text("a"), "b.yaml": policy_text("b")}
        )
        data = make_bundle(source, ring, [0, 1]).data
    trust = ring.trust(2, 0, 1, 2)
    return data, trust, verify_bundle(data, trust, T0), ring.keys[3]


def check_contract(data: bytes) -> None:
    """The property: rejected by name, or exactly the original content."""
    original, trust, expected, _ = valid()
    try:
        accepted = verify_bundle(data, trust, T0)
    except BundleRejected as exc:
        assert exc.reason, exc
        return
    assert accepted.payload_digest == expected.payload_digest, "accepted a changed manifest"
    assert accepted.manifest == expected.manifest
    assert accepted.files == expected.files, "accepted changed files"
    assert len(accepted.signers) >= 2 and accepted.signers <= expected.signers | trust_ids(trust)


def trust_ids(trust: TrustStore) -> frozenset[str]:
    return frozenset(trust.keys)


# ---- bytes ---------------------------------------------------------------------------------------


@st.composite
def byte_mutations(draw: st.DrawFn) -> bytes:
    data = valid()[0]
    for _ in range(draw(st.integers(1, 3))):
        size = len(data)
        if size == 0:
            break
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite", "move"]))
        at = draw(st.integers(0, size - 1))
        if kind == "flip":
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 600)) :]
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=64))
            data = data[:at] + chunk + data[at + len(chunk) :]
        else:
            other = draw(st.integers(0, size - 1))
            block = data[at : at + 512]
            rest = data[:at] + data[at + 512 :]
            data = rest[:other] + block + rest[other:]
    return data


@FUZZ
@given(byte_mutations())
def test_fuzz_bundle_bytes(data: bytes) -> None:
    count("bundle: byte mutations")
    check_contract(data)


# ---- the DSSE envelope -------------------------------------------------------------------------


def contents() -> tuple[Envelope, dict[str, bytes]]:
    archive = read_archive(valid()[0])
    return parse_envelope(archive.envelope), dict(archive.files)


def edit_payload(draw: st.DrawFn, payload: bytes) -> bytes:
    try:
        doc = json.loads(payload)
    except ValueError:  # an earlier edit flipped a byte: keep flipping
        doc = None
    if doc is None or not isinstance(doc, dict) or draw(st.booleans()):
        at = draw(st.integers(0, max(0, len(payload) - 1)))
        return payload[:at] + bytes([payload[at:at + 1][0] ^ draw(st.integers(1, 255))]
                                    if payload else b"") + payload[at + 1 :]  # fmt: skip
    field = draw(st.sampled_from(["version", "expires", "hash", "name", "extra", "files"]))
    if field == "version":
        doc["version"] = draw(st.integers(-5, 2**40))
    elif field == "expires":
        doc["expires"] = draw(st.sampled_from(["2099-01-01T00:00:00Z", 0, None, "soon"]))
    elif field == "hash" and doc.get("files"):
        doc["files"][0]["sha256"] = "0" * 64
    elif field == "name":
        doc["name"] = draw(st.text(max_size=12))
    elif field == "files":
        doc["files"] = doc.get("files", [])[:-1]
    else:
        doc[draw(st.text(max_size=6))] = draw(st.integers())
    return json.dumps(doc, sort_keys=True).encode()


@st.composite
def envelope_mutations(draw: st.DrawFn) -> bytes:
    envelope, files = contents()
    payload_type, payload, sigs = envelope.payload_type, envelope.payload, list(envelope.signatures)
    forger = valid()[3]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(
                ["payload", "type", "drop", "duplicate", "swap", "corrupt", "hint", "forge",
                 "empty", "many"]
            )
        )  # fmt: skip
        if kind == "payload":
            payload = edit_payload(draw, payload)
        elif kind == "type":
            payload_type = draw(st.sampled_from(["", "application/json", payload_type + " "]))
        elif kind == "drop" and sigs:
            sigs.pop(draw(st.integers(0, len(sigs) - 1)))
        elif kind == "duplicate" and sigs:
            sig = sigs[draw(st.integers(0, len(sigs) - 1))]
            sigs = [sig, sig] if draw(st.booleans()) else [*sigs, sig]
        elif kind == "swap" and len(sigs) >= 2:
            sigs[0], sigs[1] = (
                Signature(sigs[0].keyid, sigs[1].sig),
                Signature(sigs[1].keyid, sigs[0].sig),
            )
        elif kind == "corrupt" and sigs:
            i = draw(st.integers(0, len(sigs) - 1))
            sigs[i] = Signature(sigs[i].keyid, draw(st.binary(max_size=80)))
        elif kind == "hint" and sigs:
            i = draw(st.integers(0, len(sigs) - 1))
            sigs[i] = Signature(draw(st.sampled_from(["", "x", sigs[-1].keyid])), sigs[i].sig)
        elif kind == "forge":
            forged = sign(Envelope(payload_type, payload), forger).signatures[0]
            sigs = [*sigs, forged] if draw(st.booleans()) else [forged, forged]
        elif kind == "empty":
            sigs = []
        elif kind == "many":
            sigs = sigs * draw(st.integers(2, 20))
    return write_archive(Envelope(payload_type, payload, tuple(sigs)).to_json(), files)


@FUZZ
@given(envelope_mutations())
def test_fuzz_bundle_dsse_envelope(data: bytes) -> None:
    count("bundle: DSSE envelope mutations")
    check_contract(data)


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


@st.composite
def raw_envelope_mutations(draw: st.DrawFn) -> bytes:
    envelope, files = contents()
    doc: dict[str, Any] = json.loads(envelope.to_json())
    target = draw(st.sampled_from(["payload", "payloadType", "signatures", "sig", "keyid", "new"]))
    if target in ("sig", "keyid") and doc["signatures"]:
        doc["signatures"][0][target] = draw(JSON_VALUES)
    elif target == "new":
        doc[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    elif draw(st.booleans()):
        doc.pop(target, None)
    else:
        doc[target] = draw(
            JSON_VALUES | st.just(base64.b64encode(b"x" * 10).decode()) | st.just("!!notb64")
        )
    raw = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    return write_archive(raw, files)


@FUZZ
@given(raw_envelope_mutations())
def test_fuzz_bundle_raw_envelope_json(data: bytes) -> None:
    count("bundle: raw envelope JSON mutations")
    check_contract(data)


# ---- the files ---------------------------------------------------------------------------------


@st.composite
def file_mutations(draw: st.DrawFn) -> bytes:
    envelope, files = contents()
    names = sorted(files)
    kind = draw(st.sampled_from(["change", "add", "remove", "rename", "empty"]))
    name = draw(st.sampled_from(names))
    if kind == "change":
        data = files[name]
        at = draw(st.integers(0, max(0, len(data) - 1)))
        files[name] = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at + 1 :]
    elif kind == "add":
        files[draw(st.sampled_from(["c.yaml", "scripts/x.sh", name + "2", ".hidden"]))] = (
            draw(st.binary(max_size=64))
        )  # fmt: skip
    elif kind == "remove":
        del files[name]
    elif kind == "rename":
        files[name + ".bak"] = files.pop(name)
    else:
        files[name] = b""
    try:
        return write_archive(envelope.to_json(), files)
    except ValueError:  # a path the packer itself refuses: not an input a bundle can hold
        assume(False)
        raise


@FUZZ
@given(file_mutations())
def test_fuzz_bundle_files(data: bytes) -> None:
    count("bundle: file mutations")
    check_contract(data)


def test_the_original_is_accepted_and_the_forger_is_not_pinned() -> None:
    data, trust, expected, forger = valid()
    check_contract(data)
    assert len(expected.signers) == 2
    envelope, files = contents()
    forged = sign(Envelope(envelope.payload_type, envelope.payload), forger)
    with pytest.raises(BundleRejected):
        verify_bundle(write_archive(forged.to_json(), files), trust, T0)
