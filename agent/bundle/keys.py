"""Ed25519 public keys as the agent pins them: PEM files on disk, identified by a key id.

A key id is the SHA-256 of the raw 32-byte public key, in hex. It is derived, never declared, so a
file cannot claim to be a key it is not; in envelopes it is only a hint (see ``dsse``).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import StanchError

PUBLIC_SUFFIX = ".pub"
MAX_KEY_FILE_BYTES = 16 * 1024


class KeyFileError(StanchError):
    """A key file cannot be used; the message names the file and the problem."""


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()


def short_id(keyid: str) -> str:
    return keyid[:16]


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_from_b64(text: str) -> Ed25519PublicKey:
    """A raw public key in base64 (as trust roots carry them)."""
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError as exc:
        raise KeyFileError(f"not a base64 Ed25519 public key: {exc}") from None


def public_to_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(key)).decode("ascii")


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read one PEM ``SubjectPublicKeyInfo`` Ed25519 public key."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes; not a public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM public key (an opsctl *.pub file)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: is a {type(key).__name__}, expected an Ed25519 public key")
    return key


def load_public_dir(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Every ``*.pub`` in ``directory`` by key id. The same key in two files counts once."""
    if not directory.is_dir():
        raise KeyFileError(f"{directory}: not a directory of {PUBLIC_SUFFIX} keys")
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        key = load_public_key(path)
        keys[key_id(key)] = key
    return keys
