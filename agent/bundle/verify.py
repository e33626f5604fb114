"""Verify a bundle, strictly and in both directions, before anything in it is used.

The order matters. Cheap structural checks run first, including that the file is byte for byte
the canonical encoding of its contents, so a digest names exactly one content. The manifest is
parsed only after a threshold of pinned keys signed it, so unauthenticated JSON never steers
anything. Then every file is held to the manifest: nothing extra, nothing missing, every byte
hashed. Each failure is a :class:`BundleRejected` with a named :class:`Reason`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from agent.bundle.archive import (
    ENVELOPE_NAME,
    MAX_BUNDLE_BYTES,
    digest_of,
    read_archive,
    write_archive,
)
from agent.bundle.dsse import Envelope, EnvelopeError
from agent.bundle.keys import short_id
from agent.bundle.manifest import PAYLOAD_TYPE, Manifest, ManifestError, format_time
from agent.bundle.rejection import BundleRejected, Reason
from agent.bundle.trust import TrustStore
from agent.policy.model import API_VERSION


@dataclass(frozen=True)
class VerifiedBundle:
    digest: str
    """SHA-256 of the whole bundle file (its name)."""
    payload_digest: str
    """SHA-256 of the signed manifest: the same for every signing of the same content."""
    manifest: Manifest
    signers: frozenset[str]
    files: dict[str, bytes]


def verify_bundle(
    data: bytes,
    trust: TrustStore,
    now: float,
    *,
    max_bytes: int = MAX_BUNDLE_BYTES,
    check_expiry: bool = True,
) -> VerifiedBundle:
    """Return the verified bundle or raise :class:`BundleRejected`.

    ``check_expiry=False`` is for looking at a bundle already accepted (status, re-verifying the
    active one after a restart); accepting a new bundle always checks it.
    """
    contents = read_archive(data, max_bytes)
    envelope = parse_envelope(contents.envelope)
    if write_archive(envelope.to_json(), contents.files) != data:
        # One content, one encoding: padding, ordering, headers or JSON whitespace changed after
        # packing would otherwise give a second digest (name) for the same signed content.
        raise BundleRejected(
            Reason.MALFORMED, "not in canonical form (altered after packing); rebuild with opsctl"
        )
    if envelope.payload_type != PAYLOAD_TYPE:
        raise BundleRejected(
            Reason.WRONG_PAYLOAD_TYPE,
            f"payloadType is {envelope.payload_type!r}; a bundle manifest is {PAYLOAD_TYPE!r}",
        )
    signers = check_signatures(envelope, trust)
    try:
        manifest = Manifest.from_payload(envelope.payload)
    except ManifestError as exc:
        raise BundleRejected(Reason.MALFORMED, f"signed manifest is invalid: {exc}") from None
    if manifest.policy_api != API_VERSION:
        raise BundleRejected(
            Reason.UNSUPPORTED_SCHEMA,
            f"bundle policies are {manifest.policy_api!r}; this agent reads {API_VERSION!r}",
        )
    if check_expiry and now >= manifest.expires:
        raise BundleRejected(
            Reason.EXPIRED,
            f"{manifest.name} v{manifest.version} expired at {format_time(manifest.expires)} "
            f"(now {format_time(now)}); re-sign a fresh bundle",
        )
    check_files(manifest, contents.files)
    return VerifiedBundle(
        digest=digest_of(data),
        payload_digest=hashlib.sha256(envelope.payload).hexdigest(),
        manifest=manifest,
        signers=signers,
        files=contents.files,
    )


def parse_envelope(raw: bytes | None) -> Envelope:
    if raw is None:
        raise BundleRejected(Reason.NO_SIGNATURE, f"the bundle has no {ENVELOPE_NAME}")
    try:
        return Envelope.from_json(raw)
    except EnvelopeError as exc:
        raise BundleRejected(Reason.MALFORMED, f"{ENVELOPE_NAME}: {exc}") from None


def check_signatures(envelope: Envelope, trust: TrustStore) -> frozenset[str]:
    if not envelope.signatures:
        raise BundleRejected(Reason.NO_SIGNATURE, "the manifest is not signed")
    signers = trust.signers(envelope)
    if not signers:
        hints = ", ".join(short_id(s.keyid) or "(none)" for s in envelope.signatures)
        raise BundleRejected(
            Reason.UNKNOWN_KEY,
            f"none of {len(envelope.signatures)} signature(s) verifies with a pinned key "
            f"(keyid hints: {hints}); is the signer's .pub in the trust directory?",
        )
    if len(signers) < trust.threshold:
        names = ", ".join(short_id(s) for s in sorted(signers))
        raise BundleRejected(
            Reason.BELOW_THRESHOLD,
            f"{len(signers)} trusted key(s) signed ({names}); {trust.threshold} required",
        )
    return signers


def check_files(manifest: Manifest, files: dict[str, bytes]) -> None:
    listed = {entry.path for entry in manifest.files}
    extra = sorted(set(files) - listed)
    if extra:
        raise BundleRejected(
            Reason.FILE_NOT_IN_MANIFEST, f"files/{extra[0]} is not covered by the signed manifest"
        )
    for entry in manifest.files:
        content = files.get(entry.path)
        if content is None:
            raise BundleRejected(
                Reason.FILE_MISSING, f"files/{entry.path} is in the manifest but not the bundle"
            )
        if len(content) != entry.size or hashlib.sha256(content).hexdigest() != entry.sha256:
            raise BundleRejected(
                Reason.HASH_MISMATCH,
                f"files/{entry.path}: content does not match the manifest's SHA-256",
            )
