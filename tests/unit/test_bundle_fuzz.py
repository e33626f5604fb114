"""Property: no mutation of a valid signed bundle changes what an agent runs, and none crashes it.

Every changed byte ends in :class:`BundleRejected` (a named reason), never in another exception,
with one principled exception: DSSE's ``keyid`` is an unauthenticated hint (the spec says so, and
the verifier tries every pinned key whatever it says). A mutation confined to a hint is accepted as
exactly the original signed content (same manifest, files and signers) under a new file digest.
The canonical-encoding check is what makes everything else fail, including bytes no parser reads
(tar padding, JSON whitespace).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.bundle import BundleRejected, BundleStore
from agent.bundle.archive import read_archive
from agent.bundle.dsse import Envelope, Signature
from agent.bundle.trust import TrustStore
from agent.bundle.verify import parse_envelope, verify_bundle
from controlplane.bundle_fixtures import T0, KeyRing, make_bundle, policy_text, write_source


@functools.cache
def valid() -> tuple[bytes, TrustStore]:
    ring = KeyRing.generate(3)
    with tempfile.TemporaryDirectory() as tmp:
        source = write_source(
            Path(tmp) / "p", {"a.yaml": policy_text("a"), "b.yaml": policy_text("b")}
        )
        data = make_bundle(source, ring, [0, 1]).data
    return data, ring.trust(2)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data, _ = valid()
    size = len(data)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite", "splice"]))
    at = draw(st.integers(0, size - 1))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 600)) :]
    if kind == "overwrite":
        chunk = draw(st.binary(min_size=1, max_size=64))
        return data[:at] + chunk + data[at + len(chunk) :]
    other = draw(st.integers(0, size - 1))  # move one 512-byte block elsewhere
    block = data[at : at + 512]
    rest = data[:at] + data[at + 512 :]
    return rest[:other] + block + rest[other:]


def without_hints(data: bytes) -> Envelope:
    envelope = parse_envelope(read_archive(data).envelope)
    sigs = tuple(Signature("", s.sig) for s in envelope.signatures)
    return Envelope(envelope.payload_type, envelope.payload, sigs)


@settings(max_examples=500, deadline=None)
@given(mutated())
def test_no_mutation_changes_what_is_accepted_and_none_crashes(data: bytes) -> None:
    original, trust = valid()
    if data == original:
        return
    try:
        accepted = verify_bundle(data, trust, T0)
    except BundleRejected:
        return
    expected = verify_bundle(original, trust, T0)
    assert without_hints(data) == without_hints(original), "only a keyid hint may differ"
    assert accepted.payload_digest == expected.payload_digest
    assert accepted.files == expected.files
    assert accepted.signers == expected.signers


def test_a_changed_hint_is_the_only_accepted_single_byte_change() -> None:
    """Exhaustive over the envelope: flip each byte; only bytes inside keyid hints survive."""
    original, trust = valid()
    envelope_end = original.index(b"files/")  # the envelope and its padding come first
    survivors = []
    for at in range(envelope_end):
        data = original[:at] + bytes([original[at] ^ 0x01]) + original[at + 1 :]
        try:
            verify_bundle(data, trust, T0)
        except BundleRejected:
            continue
        survivors.append(at)
    hints = [original.index(s.keyid.encode()) for s in signatures_of(original)]
    allowed = {at for start in hints for at in range(start, start + 64)}
    assert survivors and set(survivors) <= allowed


def signatures_of(data: bytes) -> tuple[Signature, ...]:
    return parse_envelope(read_archive(data).envelope).signatures


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_the_store_refuses_mutations_and_keeps_the_active_bundle(data: bytes) -> None:
    original, trust = valid()
    if data == original:
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = BundleStore(Path(tmp) / "state")
        good = Path(tmp) / "good.bundle"
        good.write_bytes(original)
        active = store.install(good, trust, T0).digest
        bad = Path(tmp) / "bad.bundle"
        bad.write_bytes(data)
        try:
            store.install(bad, trust, T0)
        except BundleRejected as exc:
            assert store.rejections.read()[-1].reason == exc.reason
            assert store.active_status(T0).digest == active  # type: ignore[union-attr]
        else:
            assert without_hints(data) == without_hints(original), "only a keyid hint may differ"
