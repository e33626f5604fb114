"""The applier's pieces that need no network: the size bound, and the verifier's verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.archive import MAX_BUNDLE_BYTES
from agent.bundle.keys import public_pem
from agent.fleet.apply import FETCH_LIMIT
from agent.fleet.assignment import Assignment
from controlplane.bundle_fixtures import KeyRing, make_bundle, policy_text, write_source
from controlplane.keys import sign

REPO = Path(__file__).resolve().parents[2]


def verifier(*args: str, stdin: bytes = b"") -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "agent.fleet.verifier", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    verdict: dict[str, object] = json.loads(done.stdout)
    return verdict


def test_the_fetch_bound_is_the_bundle_bound() -> None:
    assert FETCH_LIMIT == MAX_BUNDLE_BYTES


def test_verifier_assignment_verdicts(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "cp.pub").write_bytes(public_pem(key.public_key()))
    assignment = Assignment("web-1", "cd" * 32, 2, 5, 1_800_000_000.0, "r9")
    envelope = sign(assignment.envelope(), key).to_json()
    ok = verifier(
        "assignment", "--keys", str(tmp_path), "--host", "web-1", "--last-seq", "4", stdin=envelope
    )
    assert ok == {"ok": True, "assignment": json.loads(json.dumps(assignment.__dict__))}
    stale = verifier(
        "assignment", "--keys", str(tmp_path), "--host", "web-1", "--last-seq", "5", stdin=envelope
    )
    assert stale["reason"] == "replayed" and stale["seq"] == 5
    missing = verifier(
        "assignment",
        "--keys",
        str(tmp_path / "nope"),
        "--host",
        "web-1",
        "--last-seq",
        "0",
        stdin=envelope,
    )
    assert missing["reason"] == "trust_error"


def test_verifier_install_checks_the_digest_first(tmp_path: Path) -> None:
    ring = KeyRing.generate(1)
    trust = ring.write_pubs(tmp_path / "trust")
    source = write_source(tmp_path / "src", {"a.yaml": policy_text("a")})
    bundle = make_bundle(source, ring, [0], created=time.time())
    path = bundle.write(tmp_path / "out")
    common = ["--trust", str(trust), "--state-dir", str(tmp_path / "state")]
    wrong = verifier("install", str(path), "--digest", "00" * 32, *common)
    assert wrong["reason"] == "digest_mismatch" and wrong["transient"] is True
    assert not (tmp_path / "state" / "bundles" / "active.json").exists()
    done = verifier("install", str(path), "--digest", bundle.digest, *common)
    assert done["ok"] is True and done["digest"] == bundle.digest and done["changed"] is True
