"""``opsctl bundle publish``: accept a bundle into the control plane only if an agent would.

The control plane verifies with the same code and the same operator keys the agents pin
(``--trust``), so a bundle it accepts is one the fleet will accept, and a tampered, unsigned or
expired one is refused at the door with the agent's own reason code rather than at the canary.
It also refuses going backwards: a version below the newest published one of the same name, or
the same version with different bytes (every change needs a new version, as agents enforce).

Publishing also reads ``manual_minutes`` from each policy, for ``opsctl reports pareto``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.bundle.rejection import BundleRejected
from agent.bundle.trust import TrustStore
from agent.bundle.verify import VerifiedBundle, verify_bundle
from agent.policy.loader import load_text
from controlplane.errors import Refused
from controlplane.storage.base import BundleRecord


@dataclass(frozen=True)
class Publication:
    record: BundleRecord
    already: bool
    warnings: tuple[str, ...] = ()


def check(
    data: bytes, trust: TrustStore, now: float, published: Sequence[BundleRecord]
) -> Publication:
    """Verify ``data`` and decide; raise :class:`Refused` with the reason, or return the record."""
    try:
        verified = verify_bundle(data, trust, now)
    except BundleRejected as exc:
        raise Refused(f"bundle refused ({exc.reason}): {exc.message}") from None
    m = verified.manifest
    same = next((b for b in published if b.digest == verified.digest), None)
    if same is not None:
        return Publication(same, True)
    siblings = [b for b in published if b.name == m.name]
    if siblings:
        newest = max(siblings, key=lambda b: b.version)
        if m.version < newest.version:
            raise Refused(
                f"bundle refused (version_not_newer): {m.name} v{m.version} is older than "
                f"v{newest.version}, the newest published; build and sign a higher version"
            )
        clash = next((b for b in siblings if b.version == m.version), None)
        if clash is not None:
            raise Refused(
                f"bundle refused (version_not_newer): {m.name} v{m.version} is already "
                f"published with different bytes ({clash.digest[:12]}); every change needs a "
                f"new version"
            )
    minutes, warnings = manual_minutes(verified)
    record = BundleRecord(
        digest=verified.digest,
        name=m.name,
        version=m.version,
        created=m.created,
        expires=m.expires,
        size=len(data),
        signers=tuple(sorted(verified.signers)),
        published_at=now,
        manual_minutes=minutes,
    )
    return Publication(record, False, tuple(warnings))


def manual_minutes(verified: VerifiedBundle) -> tuple[dict[str, float], list[str]]:
    """``policy name -> manual_minutes`` from every policy file, and what could not be read."""
    minutes: dict[str, float] = {}
    warnings: list[str] = []
    for entry in verified.manifest.policies:
        text = verified.files[entry.path].decode("utf-8", errors="replace")
        policies, errors = load_text(text, entry.path)
        warnings.extend(str(e) for e in errors)
        for policy in policies:
            minutes[policy.name] = policy.manual_minutes
    return minutes, warnings
