"""Publishing: accepted only if an agent would accept it; never backwards."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controlplane import bundle_build
from controlplane.bundle_fixtures import KeyRing, make_bundle, policy_text, write_source
from controlplane.errors import Refused
from controlplane.publish import check

RING = KeyRing.generate(2)
TRUST = RING.trust(1, 0)
NOW = time.time()


def signed(tmp: Path, version: int, signer: int = 0, minutes: int = 20) -> bytes:
    text = policy_text("heartbeat") + f"  manual_minutes: {minutes}\n"
    source = write_source(tmp / f"v{version}-{signer}", {"heartbeat.yaml": text})
    return make_bundle(source, RING, [signer], version=version, created=NOW - 60).data


def test_a_signed_bundle_is_accepted_with_its_manual_minutes(tmp_path: Path) -> None:
    result = check(signed(tmp_path, 1), TRUST, NOW, [])
    assert not result.already and result.record.version == 1
    assert result.record.manual_minutes == {"heartbeat": 20.0}
    again = check(signed(tmp_path, 1), TRUST, NOW, [result.record])
    assert again.already


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: signed(tmp, 1, signer=1), "unknown_key"),
        (
            lambda tmp: bundle_build.build(write_source(tmp / "u"), "web", 1, NOW, NOW + 3600).data,
            "no_signature",
        ),
    ],
)
def test_untrusted_bundles_are_refused_with_the_agents_reason(
    tmp_path: Path, make: object, reason: str
) -> None:
    with pytest.raises(Refused, match=reason):
        check(make(tmp_path), TRUST, NOW, [])


def test_a_tampered_bundle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.bundle"
    path.write_bytes(signed(tmp_path, 1))
    bundle = bundle_build.read(path)
    files = {**bundle.files, "heartbeat.yaml": b"x: 1\n"}
    tampered = bundle_build.assemble(bundle.envelope, bundle.manifest, files).data
    with pytest.raises(Refused, match="hash_mismatch"):
        check(tampered, TRUST, NOW, [])


def test_older_or_reused_versions_are_refused(tmp_path: Path) -> None:
    v2 = check(signed(tmp_path, 2), TRUST, NOW, []).record
    with pytest.raises(Refused, match="older than v2"):
        check(signed(tmp_path, 1), TRUST, NOW, [v2])
    with pytest.raises(Refused, match="already published with different bytes"):
        check(signed(tmp_path, 2, minutes=5), TRUST, NOW, [v2])


def test_an_expired_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Refused, match="expired"):
        check(signed(tmp_path, 1), TRUST, NOW + 400 * 86400, [])
