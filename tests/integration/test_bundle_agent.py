"""The agent side in real processes: ``stanch-agent bundle install|status|rejections|trust-update``,
and a crash in the middle of an activation (``STANCH_FAILPOINTS``) leaving old or new, never a mix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.bundle import BundleStore
from agent.bundle.archive import read_archive, write_archive
from agent.policy.loader import load_dir
from controlplane.bundle_fixtures import KeyRing, make_bundle, policy_text, write_source

REPO = Path(__file__).resolve().parents[2]


def agent(*args: object, failpoint: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STANCH_FAILPOINTS"}
    if failpoint:
        env["STANCH_FAILPOINTS"] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "agent.cli_bundle", "bundle", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


class Fleet:
    """Three release keys (pinned as *.pub files, threshold 2) and bundles signed by 0 and 1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ring = KeyRing.generate(4)
        self.trust = self.ring.write_pubs(root / "trust", 0, 1, 2)
        self.state = root / "state"

    def bundle(self, version: int, limit: int, signers: tuple[int, ...] = (0, 1)) -> Path:
        source = write_source(
            self.root / f"src-{version}-{limit}", {"app.yaml": policy_text("app", limit=limit)}
        )
        built = make_bundle(source, self.ring, list(signers), version=version, lifetime=3e7)
        return built.write(self.root / "out")

    def install(self, path: Path, failpoint: str = "") -> subprocess.CompletedProcess[str]:
        return agent(
            "install",
            path,
            "--trust",
            self.trust,
            "--threshold",
            2,
            "--state-dir",
            self.state,
            "--json",
            failpoint=failpoint,
        )

    def status(self) -> dict[str, object]:
        result = agent("status", "--state-dir", self.state, "--json")
        assert result.returncode == 0, result.stderr
        active: dict[str, object] = json.loads(result.stdout)["active"]
        return active

    def active_limit(self) -> int:
        """Which bundle's policy is on disk, read the way the runner will read it."""
        directory = BundleStore(self.state).active_policy_dir()
        assert directory is not None
        loaded = load_dir(directory)
        assert loaded.errors == [] and len(loaded.policies) == 1
        value = loaded.policies[0].rule.when.value  # type: ignore[union-attr]
        return int(value)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def test_install_status_and_a_refusal_that_keeps_the_active_bundle(fleet: Fleet) -> None:
    first = fleet.install(fleet.bundle(1, 100))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["installed"] is True
    assert fleet.status()["version"] == 1 and fleet.status()["stale"] is False

    wrong = fleet.install(fleet.bundle(2, 200, signers=(3,)))
    assert wrong.returncode == 1
    assert json.loads(wrong.stdout)["reason"] == "unknown_key"
    assert "active bundle is unchanged" in wrong.stderr
    assert fleet.status()["version"] == 1 and fleet.active_limit() == 100

    log = json.loads(agent("rejections", "--state-dir", fleet.state, "--json").stdout)
    assert [r["reason"] for r in log["rejections"]] == ["unknown_key"]
    assert (fleet.state / "bundle-rejections.jsonl").read_text().count("\n") == 1


def test_human_output(fleet: Fleet) -> None:
    assert "no bundle active" in agent("status", "--state-dir", fleet.state).stdout
    bundle = fleet.bundle(1, 100)
    agent("install", bundle, "--trust", fleet.trust, "--state-dir", fleet.state)
    text = agent("status", "--state-dir", fleet.state).stdout
    assert text.startswith("web v1") and "policies:" in text and "STALE" not in text


@pytest.mark.parametrize(
    ("failpoint", "survivor"),
    [("bundle_after_extract_before_swap", 100), ("bundle_after_swap", 200)],
)
def test_a_crash_mid_activation_leaves_old_or_new_never_a_mix(
    fleet: Fleet, failpoint: str, survivor: int
) -> None:
    assert fleet.install(fleet.bundle(1, 100)).returncode == 0
    new = fleet.bundle(2, 200)
    crashed = fleet.install(new, failpoint=failpoint)
    assert crashed.returncode == 137, crashed.stderr  # os._exit, as kill -9 would
    assert fleet.active_limit() == survivor
    assert fleet.status()["version"] == (1 if survivor == 100 else 2)

    retried = fleet.install(new)
    assert retried.returncode == 0, retried.stderr
    assert fleet.active_limit() == 200 and fleet.status()["version"] == 2
    leftovers = [p.name for p in (fleet.state / "bundles").iterdir() if p.name.startswith(".st")]
    assert leftovers == []


def test_a_tampered_bundle_over_the_cli(fleet: Fleet) -> None:
    assert fleet.install(fleet.bundle(1, 100)).returncode == 0
    good = fleet.bundle(2, 200)
    contents = read_archive(good.read_bytes())
    contents.files["app.yaml"] = contents.files["app.yaml"].replace(b"200", b"999")
    tampered = fleet.root / "tampered.bundle"
    tampered.write_bytes(write_archive(contents.envelope or b"", contents.files))
    result = fleet.install(tampered)
    assert result.returncode == 1 and json.loads(result.stdout)["reason"] == "hash_mismatch"
    assert fleet.active_limit() == 100


def test_trust_update_over_the_cli(fleet: Fleet) -> None:
    root = fleet.root / "root.1.json"
    root.write_bytes(fleet.ring.root(1, 2, [1, 2, 3], [0, 1, 2, 3]))
    result = agent(
        "trust-update", root, "--trust", fleet.trust, "--threshold", 2, "--state-dir", fleet.state
    )
    assert result.returncode == 0, result.stderr
    assert "trust root v1: 3 keys, threshold 2" in result.stdout
    assert fleet.install(fleet.bundle(1, 100, signers=(0, 1))).returncode == 1  # 0 retired
    assert fleet.install(fleet.bundle(1, 100, signers=(1, 3))).returncode == 0
    bad = agent("trust-update", root, "--trust", fleet.trust, "--state-dir", fleet.state)
    assert bad.returncode == 2 and "does not follow 1" in bad.stderr


def test_the_agent_cli_passes_its_global_state_dir_through(fleet: Fleet) -> None:
    assert fleet.install(fleet.bundle(1, 100)).returncode == 0
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "--state-dir",
            str(fleet.state),
            "bundle",
            "status",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["active"]["version"] == 1
