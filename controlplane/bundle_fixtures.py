"""Real bundles for tests, shipped with the code (like httpx's ``MockTransport``).

Everything here goes through the production paths (``bundle_build.build``/``sign``, real Ed25519
keys, real tar files); the only shortcuts are fixed timestamps and a way to pack a manifest that
``build`` would have refused, for testing what an agent does with a *signed* bad bundle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.dsse import Envelope
from agent.bundle.keys import key_id, public_pem
from agent.bundle.manifest import PAYLOAD_TYPE, FileEntry, Manifest
from agent.bundle.trust import ROOT_PAYLOAD_TYPE, TrustStore, root_payload
from agent.policy.model import API_VERSION
from controlplane import bundle_build
from controlplane.keys import sign

T0 = 1_800_000_000.0
"""A fixed "now" (2027-01-15); bundles below are created at T0 and expire 30 days later."""
DAY = 86400.0

POLICY_TEMPLATE = """\
apiVersion: stanch.dev/v1
kind: Policy
metadata:
  name: {name}
spec:
  checks:
    beat:
      type: file
      path: {path}
  rule:
    when:
      check: beat
      metric: age_seconds
      op: ">"
      value: {limit}
  remediation:
    steps:
      - name: restart
        run: [systemctl, restart, {name}]
"""


def policy_text(name: str, path: str = "/var/run/app.heartbeat", limit: int = 120) -> str:
    return POLICY_TEMPLATE.format(name=name, path=path, limit=limit)


def write_source(
    directory: Path, policies: dict[str, str] | None = None, scripts: dict[str, str] | None = None
) -> Path:
    """A policy source tree: ``{file: yaml}`` at the top, executable ``{path: text}`` scripts."""
    directory.mkdir(parents=True, exist_ok=True)
    for file, text in (policies or {"heartbeat.yaml": policy_text("heartbeat")}).items():
        (directory / file).write_text(text)
    for path, text in (scripts or {"scripts/fix.sh": "#!/bin/sh\necho fixed\n"}).items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o755)
    return directory


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[Ed25519PrivateKey, ...]

    @classmethod
    def generate(cls, count: int) -> KeyRing:
        return cls(tuple(Ed25519PrivateKey.generate() for _ in range(count)))

    def trust(self, threshold: int, *indexes: int) -> TrustStore:
        chosen = [self.keys[i] for i in (indexes or range(len(self.keys)))]
        return TrustStore.from_keys([k.public_key() for k in chosen], threshold)

    def write_pubs(self, directory: Path, *indexes: int) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for i in indexes or range(len(self.keys)):
            (directory / f"release-{i}.pub").write_bytes(public_pem(self.keys[i].public_key()))
        return directory

    def root(self, version: int, threshold: int, members: list[int], signers: list[int]) -> bytes:
        """A trust-root envelope naming ``members``, signed by ``signers`` (indexes)."""
        keys = [self.keys[i].public_key() for i in members]
        envelope = Envelope(ROOT_PAYLOAD_TYPE, root_payload(keys, threshold, version))
        for i in signers:
            envelope = sign(envelope, self.keys[i])
        return envelope.to_json()

    def keyid(self, index: int) -> str:
        return key_id(self.keys[index].public_key())


def make_bundle(
    source: Path,
    ring: KeyRing,
    signers: list[int],
    *,
    name: str = "web",
    version: int = 1,
    created: float = T0,
    lifetime: float = 30 * DAY,
) -> bundle_build.Bundle:
    unsigned = bundle_build.build(source, name, version, created, created + lifetime)
    return bundle_build.sign(unsigned, [ring.keys[i] for i in signers], created)


def pack_unchecked(
    files: dict[str, bytes],
    ring: KeyRing,
    signers: list[int],
    *,
    name: str = "web",
    version: int = 1,
    policy_api: str = API_VERSION,
    created: float = T0,
    lifetime: float = 30 * DAY,
    payload_type: str = PAYLOAD_TYPE,
) -> bytes:
    """Sign a manifest over ``files`` with no policy validation (a bad but signed bundle)."""
    manifest = Manifest(
        name=name,
        version=version,
        created=created,
        expires=created + lifetime,
        policy_api=policy_api,
        files=tuple(
            FileEntry(p, hashlib.sha256(d).hexdigest(), len(d)) for p, d in sorted(files.items())
        ),
    )
    envelope = Envelope(payload_type, manifest.to_payload())
    for i in signers:
        envelope = sign(envelope, ring.keys[i])
    return bundle_build.assemble(envelope, manifest, files).data
