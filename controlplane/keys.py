"""Operator signing keys: generate, load, sign. Private keys never leave the control-plane side.

A key pair is two files: ``NAME.key`` (PKCS#8 PEM, mode 0600, optionally encrypted with a
passphrase read from an environment variable, never from argv where ``ps`` would show it) and
``NAME.pub`` next to it, the file agents pin. Like ssh, loading refuses a private key that group
or others can read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.dsse import Envelope, Signature
from agent.bundle.keys import PUBLIC_SUFFIX, key_id, public_pem
from agent.errors import StanchError

PRIVATE_SUFFIX = ".key"
MAX_KEY_FILE_BYTES = 16 * 1024


class SigningKeyError(StanchError):
    """A private key cannot be created or used; the message names the file."""


def generate(directory: Path, name: str, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0600) and ``NAME.pub``; refuse to overwrite either."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / f"{name}{PRIVATE_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(f"{path}: already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _create(private_path, pem, 0o600)
    _create(public_path, public_pem(key.public_key()), 0o644)
    return private_path, public_path


def _create(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL with the final mode: the secret is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, mode)


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    if not path.exists() and path.with_name(path.name + ".key").exists():
        path = path.with_name(path.name + ".key")  # the name given to `opsctl keys generate`
    try:
        info = path.stat()
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read a private key; "
            f"run 'chmod 600 {path}'"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise SigningKeyError(
            f"{path}: is encrypted; pass --passphrase-env NAME"
            if not passphrase
            else f"{path}: is not encrypted; drop --passphrase-env"
        ) from None
    except ValueError:
        raise SigningKeyError(f"{path}: not a PEM private key, or a wrong passphrase") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: is a {type(key).__name__}, expected Ed25519")
    return key


def sign(envelope: Envelope, key: Ed25519PrivateKey) -> Envelope:
    """Add this key's signature over the envelope's PAE (replacing its earlier one, if any)."""
    keyid = key_id(key.public_key())
    return envelope.with_signature(Signature(keyid, key.sign(envelope.signing_input())))
