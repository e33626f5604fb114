"""The bundle tar: deterministic to write, strict to read (no links, no traversal, no surprises)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agent.bundle.archive import ENVELOPE_NAME, read_archive, write_archive
from agent.bundle.manifest import path_problem
from agent.bundle.rejection import BundleRejected, Reason
from controlplane.bundle_fixtures import KeyRing, make_bundle, write_source


def raw_tar(*entries: tarfile.TarInfo | tuple[str, bytes]) -> bytes:
    """A tar with exactly these entries: (name, data) for a file, or a prepared TarInfo."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return buffer.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_the_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    source = write_source(tmp_path / "policies")
    ring = KeyRing.generate(2)
    first = make_bundle(source, ring, [0, 1])
    second = make_bundle(source, ring, [0, 1])
    assert first.data == second.data
    assert first.digest == second.digest


def test_entries_are_sorted_with_zeroed_metadata(tmp_path: Path) -> None:
    data = make_bundle(write_source(tmp_path / "p"), KeyRing.generate(1), [0]).data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        ENVELOPE_NAME,
        "files/heartbeat.yaml",
        "files/scripts/fix.sh",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }


def test_a_written_archive_reads_back() -> None:
    contents = read_archive(write_archive(b"{}", {"b.yaml": b"2", "a/x.sh": b"1"}))
    assert contents.envelope == b"{}"
    assert contents.files == {"a/x.sh": b"1", "b.yaml": b"2"}


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ((link("files/evil", "/etc/shadow"),), Reason.UNSAFE_PATH),
        ((link("files/evil", "files/a.yaml", tarfile.LNKTYPE),), Reason.UNSAFE_PATH),
        ((("files/../../etc/cron.d/x", b"x"),), Reason.UNSAFE_PATH),
        ((("files/a/../../b", b"x"),), Reason.UNSAFE_PATH),
        ((("files//a", b"x"),), Reason.UNSAFE_PATH),
        ((("files/.hidden", b"x"),), Reason.UNSAFE_PATH),
        ((("/etc/passwd", b"x"),), Reason.UNSAFE_PATH),
        ((("../escape", b"x"),), Reason.UNSAFE_PATH),
        ((("extra.txt", b"x"),), Reason.FILE_NOT_IN_MANIFEST),
        ((("files/a", b"1"), ("files/a", b"2")), Reason.UNSAFE_PATH),
        (((ENVELOPE_NAME, b"{}"), (ENVELOPE_NAME, b"{}")), Reason.MALFORMED),
    ],
)
def test_unsafe_entries_are_refused(
    entries: tuple[tarfile.TarInfo | tuple[str, bytes], ...], reason: Reason
) -> None:
    with pytest.raises(BundleRejected) as caught:
        read_archive(raw_tar(*entries))
    assert caught.value.reason == reason


def test_directories_and_devices_are_refused() -> None:
    for kind in (tarfile.DIRTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE):
        info = tarfile.TarInfo("files/x")
        info.type = kind
        with pytest.raises(BundleRejected) as caught:
            read_archive(raw_tar(info))
        assert caught.value.reason == Reason.UNSAFE_PATH


def test_garbage_and_oversize_are_refused() -> None:
    with pytest.raises(BundleRejected) as caught:
        read_archive(b"\x1f\x8b this is gzip, or nothing at all" * 40)
    assert caught.value.reason == Reason.MALFORMED
    with pytest.raises(BundleRejected) as caught:
        read_archive(write_archive(b"{}", {"a.yaml": b"x" * 4096}), max_bytes=1024)
    assert caught.value.reason == Reason.TOO_LARGE


@pytest.mark.parametrize(
    "path", ["/abs", "..", "a/../b", "a//b", "./a", ".git/config", "a b", "a\\b", "", "x" * 300]
)
def test_unsafe_manifest_paths(path: str) -> None:
    assert path_problem(path) is not None


@pytest.mark.parametrize("path", ["web.yaml", "scripts/fix.sh", "a/b/c_d-e.1.txt"])
def test_safe_manifest_paths(path: str) -> None:
    assert path_problem(path) is None


def test_the_writer_refuses_what_the_reader_would() -> None:
    with pytest.raises(ValueError, match="absolute"):
        write_archive(b"{}", {"/etc/passwd": b"x"})
