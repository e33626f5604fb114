"""Build and sign bundles: every policy validated first, nothing unexpected packed.

``build`` walks the source directory (sorted, recursively), refuses symlinks and unsafe names,
skips dotfiles (``.git``, editor droppings), validates every top-level policy with the agent's own
loader and refuses on any error, then writes an unsigned bundle. ``sign`` adds signatures; it
checks the files still match the manifest first, so a signer never vouches for bytes it did not
see described.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.archive import MAX_BUNDLE_BYTES, file_name, read_archive, write_archive
from agent.bundle.dsse import Envelope
from agent.bundle.durable import write_atomic
from agent.bundle.manifest import (
    MAX_VERSION,
    NAME_RE,
    PAYLOAD_TYPE,
    FileEntry,
    Manifest,
    ManifestError,
    path_problem,
)
from agent.bundle.verify import check_files, parse_envelope
from agent.errors import FieldError, StanchError
from agent.policy.loader import load_dir
from agent.policy.model import API_VERSION
from controlplane.keys import sign as sign_envelope


class BuildError(StanchError):
    """The bundle was not built; ``errors`` lists every problem as ``file: path: problem``."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True)
class Bundle:
    """A bundle file's bytes with its (unverified) envelope and manifest."""

    data: bytes
    envelope: Envelope
    manifest: Manifest
    files: dict[str, bytes]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def write(self, directory: Path) -> Path:
        """Write as ``DIRECTORY/<sha256>.bundle`` (atomically) and return the path."""
        path = directory / file_name(self.digest)
        write_atomic(path, self.data)
        return path


def collect(source: Path) -> tuple[dict[str, bytes], set[str], list[FieldError]]:
    """Every regular file under ``source`` by relative path, the executable ones, and problems."""
    files: dict[str, bytes] = {}
    executable: set[str] = set()
    errors: list[FieldError] = []
    if not source.is_dir():
        return files, executable, [FieldError(str(source), "", "not a directory of policies")]
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for dirname in dirnames:
            if (Path(dirpath) / dirname).is_symlink():
                errors.append(FieldError(str(Path(dirpath) / dirname), "", "is a symlink"))
        for filename in sorted(f for f in filenames if not f.startswith(".")):
            path = Path(dirpath) / filename
            relative = path.relative_to(source).as_posix()
            problem = path_problem(relative)
            if path.is_symlink() or not path.is_file():
                errors.append(
                    FieldError(
                        str(path),
                        "",
                        "not a regular file (symlinks are not bundled; copy the file in)",
                    )
                )
            elif problem:
                errors.append(FieldError(str(path), "", f"cannot be bundled: {problem}"))
            else:
                files[relative] = path.read_bytes()
                if os.access(path, os.X_OK):
                    executable.add(relative)
    return files, executable, errors


def build(source: Path, name: str, version: int, created: float, expires: float) -> Bundle:
    """Validate and pack ``source`` into an unsigned bundle, or raise :class:`BuildError`."""
    errors = _option_errors(name, version, created, expires)
    files, executable, problems = collect(source)
    errors.extend(problems)
    if source.is_dir():
        errors.extend(load_dir(source).errors)
    manifest = Manifest(
        name=name,
        version=version,
        created=created,
        expires=expires,
        policy_api=API_VERSION,
        files=tuple(
            FileEntry(path, hashlib.sha256(data).hexdigest(), len(data), path in executable)
            for path, data in sorted(files.items())
        ),
    )
    if source.is_dir() and not manifest.policies:
        errors.append(FieldError(str(source), "", "no policy files (*.yaml) at the top level"))
    if not errors:
        try:  # the checks an agent applies: a bundle that builds is one agents can read
            Manifest.from_payload(manifest.to_payload())
        except ManifestError as exc:
            errors.append(FieldError("manifest", "", str(exc)))
    if errors:
        raise BuildError(errors)
    bundle = assemble(Envelope(PAYLOAD_TYPE, manifest.to_payload()), manifest, files)
    if len(bundle.data) > MAX_BUNDLE_BYTES:
        raise BuildError([FieldError(str(source), "", f"bundle exceeds {MAX_BUNDLE_BYTES} bytes")])
    return bundle


def _option_errors(name: str, version: int, created: float, expires: float) -> list[FieldError]:
    errors = []
    if not NAME_RE.match(name):
        errors.append(FieldError("--name", "", "use lowercase letters, digits, '.', '_', '-'"))
    if not 0 < version <= MAX_VERSION:
        errors.append(FieldError("--version", "", f"must be from 1 to {MAX_VERSION}"))
    if expires - created < 1:
        errors.append(FieldError("--expires", "", "must be at least one second"))
    return errors


def assemble(envelope: Envelope, manifest: Manifest, files: dict[str, bytes]) -> Bundle:
    return Bundle(write_archive(envelope.to_json(), files), envelope, manifest, files)


def read(path: Path) -> Bundle:
    """Parse a bundle without trusting its signatures (for sign, inspect, diff), holding every
    file to the manifest: what a reviewer or signer sees is what the manifest describes."""
    data = path.read_bytes()
    contents = read_archive(data)
    envelope = parse_envelope(contents.envelope)
    try:
        manifest = Manifest.from_payload(envelope.payload)
    except ManifestError as exc:
        raise BuildError([FieldError(str(path), "manifest", str(exc))]) from None
    check_files(manifest, contents.files)
    return Bundle(data, envelope, manifest, contents.files)


def sign(bundle: Bundle, keys: list[Ed25519PrivateKey], now: float) -> Bundle:
    if bundle.envelope.payload_type != PAYLOAD_TYPE:
        raise BuildError([FieldError("manifest.dsse.json", "payloadType", "not a bundle")])
    if now >= bundle.manifest.expires:
        raise BuildError([FieldError("manifest", "expires", "already expired; rebuild it")])
    envelope = bundle.envelope
    for key in keys:
        envelope = sign_envelope(envelope, key)
    return assemble(envelope, bundle.manifest, bundle.files)
