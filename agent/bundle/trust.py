"""The agent's trust store: pinned Ed25519 keys and a signature threshold, with TUF-style rotation.

Two ways to pin, both from one directory (``--trust DIR``):

- ``DIR/root.json``: a signed trust root (a DSSE envelope, payloadType :data:`ROOT_PAYLOAD_TYPE`)
  naming the keys, the threshold and a root version. It must be signed by a threshold of its own
  keys. This is the production form, because it can rotate.
- otherwise every ``DIR/*.pub``, with a threshold given by the caller (default 1). Good for a lab;
  it rotates only by editing every host.

Rotation follows TUF's root role: root N+1 is accepted only when a threshold of root N's keys
*and* a threshold of root N+1's own keys signed it, and versions go up by exactly one, so a client
walks the chain and never skips a link. Adding or retiring a key is a new root, shipped like any
other file; no host is touched by hand. Roots do not expire: a fleet that cannot reach its control
plane for a month must still be able to verify the bundle it already runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.bundle.dsse import Envelope, EnvelopeError, verified_keyids
from agent.bundle.keys import key_id, load_public_dir, public_from_b64, public_to_b64
from agent.errors import StanchError

ROOT_PAYLOAD_TYPE = "application/vnd.stanch.root+json"
ROOT_FORMAT = "stanch.dev/root/v1"
ROOT_FILE = "root.json"
MAX_ROOT_BYTES = 256 * 1024


class TrustError(StanchError):
    """A trust root cannot be loaded or a rotation was refused; the message says which check."""


@dataclass(frozen=True)
class TrustStore:
    keys: Mapping[str, Ed25519PublicKey]
    threshold: int
    version: int = 0
    """The trust root's version; 0 for a plain directory of pinned ``*.pub`` keys."""
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise TrustError(f"{self.source or 'trust store'}: no keys pinned")
        if not 1 <= self.threshold <= len(self.keys):
            raise TrustError(
                f"{self.source or 'trust store'}: threshold {self.threshold} needs 1 to "
                f"{len(self.keys)} (the number of pinned keys)"
            )

    @classmethod
    def from_keys(cls, keys: list[Ed25519PublicKey], threshold: int) -> TrustStore:
        return cls({key_id(k): k for k in keys}, threshold, source="keys")

    @classmethod
    def load(cls, directory: str | Path, threshold: int | None = None) -> TrustStore:
        """Pin from ``directory``. A ``threshold`` given here may raise a root's, never lower it."""
        root = Path(directory)
        if (root / ROOT_FILE).exists():
            store = trust_from_root(read_envelope(root / ROOT_FILE), str(root / ROOT_FILE))
            if threshold is not None and threshold > store.threshold:
                return TrustStore(store.keys, threshold, store.version, store.source)
            return store
        try:
            keys = load_public_dir(root)
        except StanchError as exc:
            raise TrustError(str(exc)) from None
        return cls(keys, 1 if threshold is None else threshold, source=str(root))

    def signers(self, envelope: Envelope) -> frozenset[str]:
        """Ids of pinned keys with a valid signature on ``envelope`` (each key counted once)."""
        return verified_keyids(envelope, self.keys)

    def rotate(self, envelope: Envelope, source: str = "root") -> TrustStore:
        """Accept root ``version + 1`` if both the current and the new keys sign it."""
        new = trust_from_root(envelope, source)
        if new.version != self.version + 1:
            raise TrustError(
                f"{source}: root version {new.version} does not follow {self.version}; "
                f"apply root versions one at a time, in order"
            )
        old_signers = self.signers(envelope)
        if len(old_signers) < self.threshold:
            raise TrustError(
                f"{source}: signed by {len(old_signers)} of the current root's keys; "
                f"rotation needs {self.threshold} (the current threshold)"
            )
        return new


def read_envelope(path: Path) -> Envelope:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_ROOT_BYTES + 1)
    except OSError as exc:
        raise TrustError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_ROOT_BYTES:
        raise TrustError(f"{path}: larger than {MAX_ROOT_BYTES} bytes")
    try:
        return Envelope.from_json(data)
    except EnvelopeError as exc:
        raise TrustError(f"{path}: {exc}") from None


def trust_from_root(envelope: Envelope, source: str) -> TrustStore:
    """Parse a root envelope and require a threshold of its own keys to have signed it."""
    if envelope.payload_type != ROOT_PAYLOAD_TYPE:
        raise TrustError(f"{source}: payloadType {envelope.payload_type!r} is not a trust root")
    doc = _json(envelope.payload, source)
    if doc.get("format") != ROOT_FORMAT:
        raise TrustError(f"{source}: format must be {ROOT_FORMAT!r}")
    version, threshold, raw_keys = doc.get("version"), doc.get("threshold"), doc.get("keys")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TrustError(f"{source}: version must be a positive integer")
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise TrustError(f"{source}: threshold must be an integer")
    if not isinstance(raw_keys, list) or not all(isinstance(k, str) for k in raw_keys):
        raise TrustError(f"{source}: keys must be a list of base64 Ed25519 public keys")
    try:
        keys = [public_from_b64(k) for k in raw_keys]
    except StanchError as exc:
        raise TrustError(f"{source}: {exc}") from None
    store = TrustStore({key_id(k): k for k in keys}, threshold, version, source)
    signed = store.signers(envelope)
    if len(signed) < store.threshold:
        raise TrustError(
            f"{source}: root v{version} is signed by {len(signed)} of its own keys; "
            f"it needs {store.threshold}"
        )
    return store


def root_payload(keys: list[Ed25519PublicKey], threshold: int, version: int) -> bytes:
    """The canonical payload of a trust root (what ``opsctl root init`` signs)."""
    doc = {
        "format": ROOT_FORMAT,
        "version": version,
        "threshold": threshold,
        "keys": sorted({public_to_b64(k) for k in keys}),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _json(payload: bytes, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise TrustError(f"{source}: root payload is not JSON") from None
    if not isinstance(doc, dict):
        raise TrustError(f"{source}: root payload must be a JSON object")
    return doc
