"""Pinned trust and TUF-style root rotation: keys are added and retired without touching hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bundle import BundleRejected, BundleStore, Reason, TrustError, TrustStore
from agent.bundle.dsse import Envelope
from agent.bundle.trust import ROOT_FILE
from controlplane.bundle_fixtures import T0, KeyRing, make_bundle, write_source


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing.generate(5)


def root_dir(tmp_path: Path, ring: KeyRing) -> Path:
    """Root v1: keys 0, 1, 2, threshold 2, self-signed by 0 and 1."""
    directory = tmp_path / "trust"
    directory.mkdir()
    (directory / ROOT_FILE).write_bytes(ring.root(1, 2, [0, 1, 2], [0, 1]))
    return directory


def test_a_directory_of_pub_files(tmp_path: Path, ring: KeyRing) -> None:
    directory = ring.write_pubs(tmp_path / "keys", 0, 1)
    (directory / "release-0.key").write_text("not read: only *.pub is pinned")
    store = TrustStore.load(directory, threshold=2)
    assert set(store.keys) == {ring.keyid(0), ring.keyid(1)}
    assert (store.threshold, store.version) == (2, 0)
    assert TrustStore.load(directory).threshold == 1


def test_the_same_key_in_two_files_counts_once(tmp_path: Path, ring: KeyRing) -> None:
    directory = ring.write_pubs(tmp_path / "keys", 0)
    (directory / "copy.pub").write_bytes((directory / "release-0.pub").read_bytes())
    with pytest.raises(TrustError, match="threshold 2 needs 1 to 1"):
        TrustStore.load(directory, threshold=2)


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        ("empty", "no keys pinned"),
        ("garbage", "not a PEM public key"),
        ("missing", "not a directory"),
    ],
)
def test_bad_trust_directories(tmp_path: Path, setup: str, problem: str) -> None:
    directory = tmp_path / "keys"
    if setup != "missing":
        directory.mkdir()
    if setup == "garbage":
        (directory / "x.pub").write_text("hello")
    with pytest.raises(TrustError, match=problem):
        TrustStore.load(directory)


def test_a_root_must_be_signed_by_a_threshold_of_its_own_keys(
    tmp_path: Path, ring: KeyRing
) -> None:
    store = TrustStore.load(root_dir(tmp_path, ring))
    assert (store.version, store.threshold, len(store.keys)) == (1, 2, 3)
    (tmp_path / "trust" / ROOT_FILE).write_bytes(ring.root(1, 2, [0, 1, 2], [0]))
    with pytest.raises(TrustError, match="signed by 1 of its own keys; it needs 2"):
        TrustStore.load(tmp_path / "trust")


def test_a_threshold_flag_may_raise_a_roots_threshold_never_lower_it(
    tmp_path: Path, ring: KeyRing
) -> None:
    directory = root_dir(tmp_path, ring)
    assert TrustStore.load(directory, threshold=1).threshold == 2
    assert TrustStore.load(directory, threshold=3).threshold == 3


def rotated(ring: KeyRing, signers: list[int], version: int = 2) -> Envelope:
    """Root v2 retires key 0 and adds key 3: members 1, 2, 3, threshold 2."""
    return Envelope.from_json(ring.root(version, 2, [1, 2, 3], signers))


def test_rotation_needs_the_old_threshold_and_the_new(tmp_path: Path, ring: KeyRing) -> None:
    v1 = TrustStore.load(root_dir(tmp_path, ring))
    v2 = v1.rotate(rotated(ring, [0, 1, 2, 3]))
    assert v2.version == 2 and set(v2.keys) == {ring.keyid(i) for i in (1, 2, 3)}
    with pytest.raises(TrustError, match="signed by 1 of the current root's keys"):
        v1.rotate(rotated(ring, [1, 3]))  # new keys only: 1 of the old root's keys
    with pytest.raises(TrustError, match="signed by 1 of its own keys"):
        v1.rotate(rotated(ring, [0, 1]))  # old keys only: 1 of the new root's keys
    with pytest.raises(TrustError, match="does not follow 1"):
        v1.rotate(rotated(ring, [0, 1, 2, 3], version=3))


def test_an_agent_follows_a_rotation_and_refuses_the_retired_key(
    tmp_path: Path, ring: KeyRing
) -> None:
    trust_dir = root_dir(tmp_path, ring)
    base = TrustStore.load(trust_dir)
    store = BundleStore(tmp_path / "state")
    source = write_source(tmp_path / "src")
    old_signed = make_bundle(source, ring, [0, 1], version=1).write(tmp_path / "out")
    store.install(old_signed, base, T0)

    root2 = tmp_path / "root.2.json"
    root2.write_bytes(ring.root(2, 2, [1, 2, 3], [0, 1, 2, 3]))
    assert store.update_root(root2, base).version == 2

    retired = make_bundle(source, ring, [0, 1], version=2).write(tmp_path / "out")
    with pytest.raises(BundleRejected) as caught:
        store.install(retired, base, T0)  # key 0 is retired: only key 1 counts now
    assert caught.value.reason == Reason.BELOW_THRESHOLD
    fresh = make_bundle(source, ring, [1, 3], version=2).write(tmp_path / "out")
    assert BundleStore(tmp_path / "state").install(fresh, base, T0).version == 2


def test_a_forged_rotation_on_disk_stops_the_chain(tmp_path: Path, ring: KeyRing) -> None:
    base = TrustStore.load(root_dir(tmp_path, ring))
    store = BundleStore(tmp_path / "state")
    store.trust_dir.mkdir(parents=True)
    (store.trust_dir / "root.2.json").write_bytes(ring.root(2, 1, [4], [4]))
    with pytest.raises(TrustError, match="current root's keys"):
        store.trust(base)


def test_a_lab_can_move_from_pub_files_to_a_signed_root(tmp_path: Path, ring: KeyRing) -> None:
    base = TrustStore.load(ring.write_pubs(tmp_path / "keys", 0, 1), threshold=2)
    root1 = tmp_path / "root.1.json"
    root1.write_bytes(ring.root(1, 2, [0, 1, 2], [0, 1]))
    assert BundleStore(tmp_path / "state").update_root(root1, base).version == 1
