"""May a verified bundle replace the active one? Versions only go up, and names do not change.

Replay protection compares against the *high-water mark* (the highest version this host ever
activated), not merely the active version: after an authorised rollback from v7 to v5, a replayed
v6 (validly signed, never revoked) must still be refused; the way forward is v8. The same version
is accepted again only with the very same signed manifest (a re-signed copy with more signatures
is the same content); the same version with different content is a freeze or mix-and-match
attack, or a release process that reused a number. Both are refused.
"""

from __future__ import annotations

from agent.bundle.pointer import ActivePointer
from agent.bundle.rejection import BundleRejected, Reason
from agent.bundle.verify import VerifiedBundle


def check_succession(
    new: VerifiedBundle,
    current: ActivePointer | None,
    allow_rollback: bool = False,
    allow_rename: bool = False,
) -> None:
    """Raise :class:`BundleRejected` unless ``new`` may follow ``current``."""
    if current is None:
        return
    manifest = new.manifest
    if manifest.name != current.name and not allow_rename:
        raise BundleRejected(
            Reason.NAME_MISMATCH,
            f"this host runs bundle {current.name!r}; refusing {manifest.name!r} "
            f"(a bundle for other hosts?); reinstall with --allow-rename to switch on purpose",
        )
    if allow_rollback or manifest.name != current.name:
        return
    high = current.high_water_version
    if manifest.version < high:
        raise BundleRejected(
            Reason.VERSION_NOT_NEWER,
            f"{manifest.name} v{manifest.version} is older than v{high}, the newest this host "
            f"has run (active: v{current.version}); publish a higher version",
        )
    if manifest.version == high and new.payload_digest != current.high_water_payload:
        raise BundleRejected(
            Reason.VERSION_NOT_NEWER,
            f"{manifest.name} v{manifest.version} has different content from the v{high} this "
            f"host already ran; every change needs a new version",
        )
