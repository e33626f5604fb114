"""The last-known-good store: activation, refusals that keep the active bundle, replays, expiry."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bundle import BundleRejected, BundleStore, Reason, read_rejections
from agent.bundle.archive import read_archive, write_archive
from agent.bundle.rejection import MAX_REJECTIONS, Rejection, RejectionLog
from agent.policy.loader import load_dir
from controlplane.bundle_build import read, sign
from controlplane.bundle_fixtures import (
    DAY,
    T0,
    KeyRing,
    make_bundle,
    pack_unchecked,
    policy_text,
    write_source,
)


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing.generate(4)


class Env:
    """A state dir, a keyring (keys 0-2 pinned, threshold 2) and a bundle factory."""

    def __init__(self, root: Path, ring: KeyRing) -> None:
        self.root, self.ring = root, ring
        self.store = BundleStore(root / "state")
        self.trust = ring.trust(2, 0, 1, 2)
        self.count = 0

    def bundle(self, version: int, limit: int = 120, name: str = "web") -> Path:
        self.count += 1
        source = write_source(
            self.root / f"src{self.count}", {"app.yaml": policy_text("app", limit=limit)}
        )
        built = make_bundle(source, self.ring, [0, 1], version=version, name=name)
        return built.write(self.root / "out")

    def raw(self, data: bytes) -> Path:
        self.count += 1
        path = self.root / "out" / f"raw{self.count}.bundle"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def install(self, path: Path, now: float = T0, **kw: bool) -> str:
        return self.store.install(path, self.trust, now, **kw).digest

    def refused(self, path: Path, now: float = T0, **kw: bool) -> BundleRejected:
        before = self.store.active()
        with pytest.raises(BundleRejected) as caught:
            self.store.install(path, self.trust, now, **kw)
        assert self.store.active() == before, "a refusal must leave the active bundle alone"
        return caught.value


@pytest.fixture
def env(tmp_path: Path, ring: KeyRing) -> Env:
    return Env(tmp_path, ring)


def test_install_activates_and_a_restarted_agent_runs_it(env: Env) -> None:
    digest = env.install(env.bundle(1))
    restarted = BundleStore(env.root / "state")  # a new process, no control plane needed
    policy_dir = restarted.active_policy_dir()
    assert policy_dir is not None and policy_dir.name == "files"
    loaded = load_dir(policy_dir)
    assert [p.name for p in loaded.policies] == ["app"] and loaded.errors == []
    assert (policy_dir / "scripts" / "fix.sh").stat().st_mode & 0o111
    status = restarted.active_status(now=T0)
    assert status is not None
    assert (status.digest, status.name, status.version, status.stale) == (digest, "web", 1, False)


def test_no_bundle_means_no_policy_dir(env: Env) -> None:
    assert env.store.active_policy_dir() is None
    assert env.store.active_status() is None


def test_reinstalling_the_active_bundle_is_a_no_op(env: Env) -> None:
    path = env.bundle(1)
    env.install(path)
    again = env.store.install(path, env.trust, T0)
    assert again.changed is False


@pytest.mark.parametrize("tamper", ["flip", "add", "remove", "strip", "wrong_key", "type"])
def test_tampered_bundles_are_refused_and_recorded(env: Env, tamper: str) -> None:
    good = env.install(env.bundle(1))
    data = pack_for(env, tamper)
    problem = env.refused(env.raw(data))
    assert env.store.active_status(T0).digest == good  # type: ignore[union-attr]
    record = read_rejections(env.root / "state")[-1]
    assert record.reason == problem.reason
    assert record.file.endswith(".bundle")


def pack_for(env: Env, tamper: str) -> bytes:
    files = {"app.yaml": policy_text("app", limit=300).encode(), "fix.sh": b"echo ok\n"}
    if tamper == "wrong_key":
        return pack_unchecked(files, env.ring, [3], version=2)
    if tamper == "type":
        return pack_unchecked(files, env.ring, [0, 1], version=2, payload_type="text/plain")
    data = pack_unchecked(files, env.ring, [] if tamper == "strip" else [0, 1], version=2)
    if tamper == "flip":
        return data.replace(b"echo ok", b"echo OK")
    contents = read_archive(data)
    if tamper == "add":
        contents.files["extra.sh"] = b"rm -rf /\n"
    else:
        del contents.files["fix.sh"]
    return write_archive(contents.envelope or b"", contents.files)


def test_replayed_older_version_is_refused(env: Env) -> None:
    old = env.bundle(1)
    env.install(old)
    env.install(env.bundle(2, limit=200))
    problem = env.refused(old)
    assert problem.reason == Reason.VERSION_NOT_NEWER


def test_same_version_different_content_is_refused(env: Env) -> None:
    env.install(env.bundle(3))
    assert env.refused(env.bundle(3, limit=999)).reason == Reason.VERSION_NOT_NEWER


def test_same_content_signed_again_is_accepted(env: Env) -> None:
    first = env.bundle(3)
    env.install(first)
    more = sign(read(first), [env.ring.keys[2]], T0).write(env.root / "out")
    activation = env.store.install(more, env.trust, T0)
    assert activation.changed and activation.version == 3


def test_authorised_rollback_then_replay_of_the_skipped_version(env: Env) -> None:
    v5, v6, v7 = env.bundle(5), env.bundle(6, limit=200), env.bundle(7, limit=300)
    for path in (v5, v6, v7):
        env.install(path)
    env.install(v5, allow_rollback=True)
    assert env.store.active_status(T0).version == 5  # type: ignore[union-attr]
    assert env.refused(v6).reason == Reason.VERSION_NOT_NEWER
    assert env.store.install(env.bundle(8), env.trust, T0).version == 8


def test_a_bundle_for_other_hosts_is_refused_unless_renaming(env: Env) -> None:
    env.install(env.bundle(1))
    other = env.bundle(50, name="db")
    assert env.refused(other).reason == Reason.NAME_MISMATCH
    assert env.store.install(other, env.trust, T0, allow_rename=True).changed


def test_expired_is_refused_but_an_active_bundle_keeps_running_stale(env: Env) -> None:
    env.install(env.bundle(1))
    late = T0 + 31 * DAY
    assert env.refused(env.bundle(2), now=late).reason == Reason.EXPIRED
    status = env.store.active_status(now=late)
    assert status is not None and status.stale and status.version == 1
    assert env.store.active_policy_dir() is not None


def test_a_signed_bundle_this_agent_cannot_load_is_refused(env: Env) -> None:
    env.install(env.bundle(1))
    bad = policy_text("app").replace("type: file", "type: quantum").encode()
    problem = env.refused(env.raw(pack_unchecked({"app.yaml": bad}, env.ring, [0, 1], version=2)))
    assert problem.reason == Reason.INVALID_POLICY
    assert "app.yaml: spec.checks.beat.type" in problem.message
    assert not list((env.root / "state" / "bundles").glob(".staging-*"))


def test_an_oversized_bundle_is_refused_before_parsing(env: Env) -> None:
    small = BundleStore(env.root / "state", max_bytes=1024)
    with pytest.raises(BundleRejected) as caught:
        small.install(env.bundle(1), env.trust, T0)
    assert caught.value.reason == Reason.TOO_LARGE


def test_unreadable_file(env: Env) -> None:
    assert env.refused(env.root / "nope.bundle").reason == Reason.UNREADABLE


def test_old_bundles_are_pruned_keeping_two_previous(env: Env) -> None:
    digests = [env.install(env.bundle(v, limit=100 + v)) for v in range(1, 6)]
    kept = {p.name for p in (env.root / "state" / "bundles").iterdir() if p.is_dir()}
    assert kept == set(digests[-3:])
    assert env.store.active().history[:2] == (digests[3], digests[2])  # type: ignore[union-attr]


def test_rejection_log_keeps_the_last_hundred(tmp_path: Path) -> None:
    log = RejectionLog(tmp_path)
    for i in range(MAX_REJECTIONS + 5):
        log.append(Rejection(at=float(i), reason="expired", message=f"#{i}", file="x"))
    records = read_rejections(tmp_path)
    assert len(records) == MAX_REJECTIONS
    assert (records[0].message, records[-1].message) == ("#5", f"#{MAX_REJECTIONS + 4}")
    (tmp_path / "bundle-rejections.jsonl").open("a").write("{torn\n")
    assert len(read_rejections(tmp_path)) == MAX_REJECTIONS


def test_a_storage_failure_keeps_the_active_bundle_and_is_recorded(env: Env) -> None:
    good = env.install(env.bundle(1))
    new = env.bundle(2, limit=200)
    digest = new.name.removesuffix(".bundle")
    (env.root / "state" / "bundles" / digest).write_text("a file where the directory goes")
    problem = env.refused(new)
    assert problem.reason == Reason.STORAGE_ERROR
    assert env.store.active_status(T0).digest == good  # type: ignore[union-attr]
    assert read_rejections(env.root / "state")[-1].reason == "storage_error"
    assert not list((env.root / "state" / "bundles").glob(".staging-*"))
