"""The bundle file: a deterministic, uncompressed POSIX tar.

Layout::

    manifest.dsse.json      the DSSE envelope; its payload is the manifest
    files/<path>            every file the manifest lists, policies at the top level

Entries are written sorted, with mtime 0, uid/gid 0, empty owner names and mode 0644, so the same
manifest, signatures and files always give the same bytes, and therefore the same digest (the
file's name). The tar mode is never trusted: the executable bit comes from the signed manifest.

Reading is strict, because the bytes are untrusted until verified: only regular files, only the
names above, no duplicates, no links, no traversal, bounded count and size. Uncompressed on
purpose: no decompression bombs, and policy text compresses in transit anyway.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass

from agent.bundle.manifest import path_problem
from agent.bundle.rejection import BundleRejected, Reason

ENVELOPE_NAME = "manifest.dsse.json"
FILES_PREFIX = "files/"
SUFFIX = ".bundle"
MAX_BUNDLE_BYTES = 64 << 20
MAX_ENTRIES = 4096


@dataclass(frozen=True)
class ArchiveContents:
    envelope: bytes | None
    files: dict[str, bytes]
    """Path below ``files/`` -> content."""


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_name(digest: str) -> str:
    """A bundle's file name: its own SHA-256, so any mirror can serve it without being trusted."""
    return f"{digest}{SUFFIX}"


def write_archive(envelope: bytes, files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, ENVELOPE_NAME, envelope)
        for path in sorted(files):
            problem = path_problem(path)
            if problem:
                raise ValueError(f"{path}: {problem}")
            _add(tar, FILES_PREFIX + path, files[path])
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def read_archive(data: bytes, max_bytes: int = MAX_BUNDLE_BYTES) -> ArchiveContents:
    """Parse an untrusted bundle. Raises :class:`BundleRejected` on anything unexpected."""
    if len(data) > max_bytes:
        raise BundleRejected(Reason.TOO_LARGE, f"bundle is {len(data)} bytes; limit {max_bytes}")
    envelope: bytes | None = None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_ENTRIES:
                    raise BundleRejected(Reason.TOO_LARGE, f"more than {MAX_ENTRIES} entries")
                name = _checked_name(member)
                if name == ENVELOPE_NAME:
                    if envelope is not None:
                        raise BundleRejected(Reason.MALFORMED, f"{ENVELOPE_NAME} appears twice")
                    envelope = _read(tar, member)
                    continue
                path = name[len(FILES_PREFIX) :]
                if path in files:
                    raise BundleRejected(Reason.UNSAFE_PATH, f"{name!r} appears twice")
                files[path] = _read(tar, member)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise BundleRejected(Reason.MALFORMED, f"not a readable bundle (tar): {exc}") from None
    return ArchiveContents(envelope, files)


def _checked_name(member: tarfile.TarInfo) -> str:
    name = member.name
    if member.issym() or member.islnk():
        raise BundleRejected(Reason.UNSAFE_PATH, f"{name!r} is a link; bundles hold files only")
    if not member.isreg() or member.sparse is not None:
        raise BundleRejected(Reason.UNSAFE_PATH, f"{name!r} is not a regular file")
    problem = path_problem(name)
    if problem:
        raise BundleRejected(Reason.UNSAFE_PATH, f"{name!r}: {problem}")
    if name != ENVELOPE_NAME and not name.startswith(FILES_PREFIX):
        raise BundleRejected(
            Reason.FILE_NOT_IN_MANIFEST,
            f"{name!r} is outside {FILES_PREFIX}; a bundle holds {ENVELOPE_NAME} and files/ only",
        )
    return name


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:  # only for non-regular members, which _checked_name refused
        raise BundleRejected(Reason.UNSAFE_PATH, f"{member.name!r} has no content")
    data = handle.read()
    if len(data) != member.size:
        raise BundleRejected(Reason.MALFORMED, f"{member.name!r} is truncated")
    return data
