"""The bundle manifest: what a signature covers.

The manifest is the DSSE payload. It lists every file with its size and SHA-256, and carries the
bundle's name, its monotonic version, when it was made and until when it may be accepted, and the
policy schema it was validated against. It is canonical JSON (sorted keys, no spaces), so the same
inputs always give the same bytes and the same bundle digest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FORMAT = "stanch.dev/bundle/v1"
PAYLOAD_TYPE = "application/vnd.stanch.bundle.manifest+json"
POLICY_SUFFIXES = (".yaml", ".yml")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_PATH = 255
MAX_VERSION = 2**53 - 1
"""Versions stay exact in every JSON parser, including JavaScript's."""


class ManifestError(ValueError):
    """The manifest is not a valid ``stanch.dev/bundle/v1`` document."""


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file in a bundle, or None when it can.

    Relative, ``/``-separated, no empty, ``.`` or ``..`` components, no leading dot (no hidden
    files), a conservative character set: nothing an extractor could resolve outside its root.
    """
    if not path or len(path) > MAX_PATH:
        return f"path must be 1 to {MAX_PATH} characters"
    if path.startswith("/"):
        return "absolute paths are not allowed"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return "path components may not be empty, '.' or '..'"
        if not _COMPONENT_RE.match(part):
            return f"component {part!r} must use letters, digits, '.', '_' or '-' (no leading dot)"
    return None


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Relative to the bundle's ``files/`` root; policies are the top-level ``*.yaml``."""
    sha256: str
    size: int
    executable: bool = False

    @property
    def is_policy(self) -> bool:
        return "/" not in self.path and self.path.endswith(POLICY_SUFFIXES)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    created: float
    expires: float
    policy_api: str
    files: tuple[FileEntry, ...]

    @property
    def policies(self) -> tuple[FileEntry, ...]:
        return tuple(f for f in self.files if f.is_policy)

    def entry(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def to_payload(self) -> bytes:
        doc = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
            "policyApiVersion": self.policy_api,
            "files": [
                {"path": f.path, "sha256": f.sha256, "size": f.size, "executable": f.executable}
                for f in sorted(self.files, key=lambda f: f.path)
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> Manifest:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ManifestError("manifest must be a JSON object")
        if doc.get("format") != FORMAT:
            raise ManifestError(f"format must be {FORMAT!r}, got {doc.get('format')!r}")
        name = _get(doc, "name", str)
        if not NAME_RE.match(name):
            raise ManifestError(f"name {name!r}: use lowercase letters, digits, '.', '_', '-'")
        version = _get(doc, "version", int)
        if isinstance(version, bool) or not 0 < version <= MAX_VERSION:
            raise ManifestError(f"version must be an integer from 1 to {MAX_VERSION}")
        created = parse_time(_get(doc, "created", str), "created")
        expires = parse_time(_get(doc, "expires", str), "expires")
        if expires <= created:
            raise ManifestError("expires must be after created")
        files = _files(_get(doc, "files", list))
        return cls(name, version, created, expires, _get(doc, "policyApiVersion", str), files)


def _files(raw: list[Any]) -> tuple[FileEntry, ...]:
    out: dict[str, FileEntry] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ManifestError(f"files[{index}] must be an object")
        path = _get(item, "path", str, f"files[{index}].")
        problem = path_problem(path)
        if problem:
            raise ManifestError(f"files[{index}].path {path!r}: {problem}")
        if path in out:
            raise ManifestError(f"files[{index}].path {path!r} is listed twice")
        digest = _get(item, "sha256", str, f"files[{index}].")
        if not SHA256_RE.match(digest):
            raise ManifestError(f"files[{index}].sha256 must be 64 lowercase hex digits")
        size = _get(item, "size", int, f"files[{index}].")
        if isinstance(size, bool) or size < 0:
            raise ManifestError(f"files[{index}].size must be a non-negative integer")
        executable = _get(item, "executable", bool, f"files[{index}].")
        out[path] = FileEntry(path, digest, size, executable)
    return tuple(out.values())


def _get(doc: dict[str, Any], key: str, kind: type[Any], prefix: str = "") -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise ManifestError(f"{prefix}{key} must be a {kind.__name__}, got {value!r}")
    return value


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, field: str = "time") -> float:
    """RFC 3339 with an explicit zone, as ``format_time`` writes it."""
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ManifestError(f"{field} {text!r} is not an RFC 3339 timestamp") from None
    if stamp.tzinfo is None:
        raise ManifestError(f"{field} {text!r} needs a timezone (e.g. 2026-01-01T00:00:00Z)")
    return stamp.timestamp()
