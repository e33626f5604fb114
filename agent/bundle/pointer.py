"""``active.json``: which bundle is active, swapped atomically by the store.

The pointer is the single source of truth for "what runs here". It is replaced with
write-fsync-rename (``durable.write_atomic``), so after a crash it names the old bundle or the new
one. It also carries the version high-water mark used against replays: the highest version this
host ever activated, and the manifest digest that version had.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.bundle.durable import write_atomic
from agent.errors import StanchError

POINTER_FILE = "active.json"
MAX_HISTORY = 8


@dataclass(frozen=True)
class ActivePointer:
    digest: str
    payload_digest: str
    name: str
    version: int
    created: float
    expires: float
    activated_at: float
    signers: tuple[str, ...]
    high_water_version: int
    high_water_payload: str
    history: tuple[str, ...] = field(default=())
    """Digests previously active, newest first (kept on disk for a fast roll back)."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def read(cls, directory: Path) -> ActivePointer | None:
        try:
            raw = json.loads((directory / POINTER_FILE).read_bytes())
            return cls(
                digest=str(raw["digest"]),
                payload_digest=str(raw["payload_digest"]),
                name=str(raw["name"]),
                version=int(raw["version"]),
                created=float(raw["created"]),
                expires=float(raw["expires"]),
                activated_at=float(raw["activated_at"]),
                signers=tuple(str(s) for s in raw["signers"]),
                high_water_version=int(raw["high_water_version"]),
                high_water_payload=str(raw["high_water_payload"]),
                history=tuple(str(d) for d in raw.get("history", ()))[:MAX_HISTORY],
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            # Only reachable by a hand edit or disk corruption: the pointer is written atomically.
            raise PointerCorrupt(f"{directory / POINTER_FILE}: unreadable ({exc})") from None

    def write(self, directory: Path) -> None:
        write_atomic(directory / POINTER_FILE, self.to_json())


class PointerCorrupt(StanchError):
    """``active.json`` exists but cannot be parsed."""


@dataclass(frozen=True)
class ActiveStatus:
    """What ``stanch-agent bundle status`` shows and metrics export."""

    digest: str
    name: str
    version: int
    created: float
    expires: float
    activated_at: float
    stale: bool
    """Past its expiry. It keeps running (availability wins); a fresh bundle is overdue."""
    signers: tuple[str, ...]
    policy_dir: Path


def active_policy_dir(state_dir: Path) -> Path | None:
    """The policy files of the bundle active in ``state_dir``, or None. Reads only the pointer:
    the bundle was verified when it was activated, so running it needs no cryptography."""
    pointer = ActivePointer.read(state_dir / "bundles")
    if pointer is None:
        return None
    directory = state_dir / "bundles" / pointer.digest / "files"
    return directory if directory.is_dir() else None
