"""Why a bundle was refused, and the bounded on-disk record of every refusal.

Each way a bundle can fail has its own :class:`Reason`, so a rollout health gate, a metric or an
operator can tell "someone tampered with it" (``hash_mismatch``) from "we shipped it too late"
(``expired``) without parsing prose. Rejections are appended to ``bundle-rejections.jsonl`` in the
state directory, bounded to the last :data:`MAX_REJECTIONS`, for the journal to forward upstream.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from agent.bundle.durable import write_atomic
from agent.errors import StanchError

REJECTIONS_FILE = "bundle-rejections.jsonl"
MAX_REJECTIONS = 100


class Reason(StrEnum):
    NO_SIGNATURE = "no_signature"
    UNKNOWN_KEY = "unknown_key"
    """Signatures are present, but none verifies with a pinned key."""
    BELOW_THRESHOLD = "below_threshold"
    WRONG_PAYLOAD_TYPE = "wrong_payload_type"
    FILE_NOT_IN_MANIFEST = "file_not_in_manifest"
    FILE_MISSING = "file_missing"
    HASH_MISMATCH = "hash_mismatch"
    EXPIRED = "expired"
    VERSION_NOT_NEWER = "version_not_newer"
    NAME_MISMATCH = "name_mismatch"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    UNSAFE_PATH = "unsafe_path"
    """Path traversal, an absolute path, a link or any entry that is not a regular file."""
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    INVALID_POLICY = "invalid_policy"
    """Signed and intact, but this agent cannot load its policies (e.g. a newer check type)."""
    UNREADABLE = "unreadable"
    STORAGE_ERROR = "storage_error"
    """Verified, but the state directory could not hold it (disk full, read-only)."""


class BundleRejected(StanchError):
    """A bundle failed verification. The active bundle, if any, stays in place."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"bundle rejected ({reason}): {message}")


@dataclass(frozen=True)
class Rejection:
    """One refused bundle, as recorded for reporting."""

    at: float
    reason: str
    message: str
    file: str
    digest: str = ""
    name: str = ""
    version: int | None = None

    @classmethod
    def from_json(cls, line: str) -> Rejection | None:
        try:
            raw = json.loads(line)
            return cls(
                at=float(raw["at"]),
                reason=str(raw["reason"]),
                message=str(raw["message"]),
                file=str(raw.get("file", "")),
                digest=str(raw.get("digest", "")),
                name=str(raw.get("name", "")),
                version=int(raw["version"]) if raw.get("version") is not None else None,
            )
        except (ValueError, KeyError, TypeError):
            return None


class RejectionLog:
    """``bundle-rejections.jsonl``: newest last, at most ``limit`` lines, rewritten atomically.

    The file is tiny (100 short lines), so each append rewrites it through a temporary file and a
    rename: a crash leaves the old list or the new one, and the bound holds without a rotation
    scheme. Unparseable lines (a torn write from an older version, a hand edit) are dropped.
    """

    def __init__(self, state_dir: Path, limit: int = MAX_REJECTIONS) -> None:
        self.path = state_dir / REJECTIONS_FILE
        self.limit = limit

    def append(self, rejection: Rejection) -> None:
        kept = self.read()[-(self.limit - 1) :] if self.limit > 1 else []
        kept.append(rejection)
        text = "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in kept)
        write_atomic(self.path, text.encode())

    def read(self) -> list[Rejection]:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        parsed = (Rejection.from_json(line) for line in lines if line.strip())
        return [r for r in parsed if r is not None][-self.limit :]


def read_rejections(state_dir: str | Path) -> list[Rejection]:
    """The recorded rejections, oldest first (what the journal forwards)."""
    return RejectionLog(Path(state_dir)).read()
