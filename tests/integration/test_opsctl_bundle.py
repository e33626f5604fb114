"""``opsctl`` end to end, as an operator runs it: real processes, real key files, real bundles."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.bundle_fixtures import policy_text, write_source

REPO = Path(__file__).resolve().parents[2]


def opsctl(*args: object, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "controlplane.opsctl", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    if ok and result.returncode != 0:
        raise AssertionError(f"opsctl {args} failed ({result.returncode}): {result.stderr}")
    return result


def built_path(result: subprocess.CompletedProcess[str], verb: str) -> Path:
    line = next(x for x in result.stdout.splitlines() if x.startswith(verb))
    return Path(line.split()[1])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    for n in (1, 2, 3):
        opsctl("keys", "generate", directory / f"release-{n}")
    return directory


def build(tmp_path: Path, source: Path, version: int, expires: str = "30d") -> Path:
    result = opsctl(
        "bundle",
        "build",
        source,
        "-o",
        tmp_path / "out",
        "--name",
        "web",
        "--version",
        version,
        "--expires",
        expires,
    )
    return built_path(result, "built")


def signed(tmp_path: Path, keys: Path, source: Path, version: int = 1, *signers: int) -> Path:
    unsigned = build(tmp_path, source, version)
    key_args = [a for n in (signers or (1, 2)) for a in ("--key", keys / f"release-{n}.key")]
    return built_path(opsctl("bundle", "sign", unsigned, *key_args), "signed")


def test_keys_are_written_private_0600_with_the_public_key_next_to_it(keys: Path) -> None:
    private, public = keys / "release-1.key", keys / "release-1.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = opsctl("keys", "generate", keys / "release-1", ok=False)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_a_group_readable_private_key_is_refused(tmp_path: Path, keys: Path) -> None:
    opsctl("keys", "generate", tmp_path / "loose")
    (tmp_path / "loose.key").chmod(0o640)
    unsigned = build(tmp_path, write_source(tmp_path / "p"), 1)
    result = opsctl("bundle", "sign", unsigned, "--key", tmp_path / "loose.key", ok=False)
    assert result.returncode == 2 and "chmod 600" in result.stderr


def test_round_trip_two_of_three(tmp_path: Path, keys: Path) -> None:
    bundle = signed(tmp_path, keys, write_source(tmp_path / "p"))
    assert bundle.name == f"{hashlib.sha256(bundle.read_bytes()).hexdigest()}.bundle"
    passed = opsctl("bundle", "verify", bundle, "--trust", keys, "--threshold", 2)
    assert "OK web v1, 2 of 2 required signatures" in passed.stdout
    failed = opsctl("bundle", "verify", bundle, "--trust", keys, "--threshold", 3, ok=False)
    assert failed.returncode == 1 and "rejected (below_threshold)" in failed.stderr


def test_unsigned_and_tampered_bundles_fail_verification(tmp_path: Path, keys: Path) -> None:
    source = write_source(tmp_path / "p")
    unsigned = build(tmp_path, source, 1)
    result = opsctl("bundle", "verify", unsigned, "--trust", keys, ok=False)
    assert result.returncode == 1 and "(no_signature)" in result.stderr

    bundle = signed(tmp_path, keys, source)
    data = bundle.read_bytes()
    at = data.index(b"systemctl")
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(data[:at] + b"X" + data[at + 1 :])
    result = opsctl("bundle", "verify", tampered, "--trust", keys, "--threshold", 2, ok=False)
    assert result.returncode == 1 and "(hash_mismatch)" in result.stderr
    assert "files/heartbeat.yaml" in result.stderr


def test_verify_as_of_a_later_time_reports_expiry(tmp_path: Path, keys: Path) -> None:
    bundle = signed(tmp_path, keys, write_source(tmp_path / "p"))
    result = opsctl(
        "bundle", "verify", bundle, "--trust", keys, "--at", "2099-01-01T00:00:00Z", ok=False
    )
    assert result.returncode == 1 and "(expired)" in result.stderr


def test_build_refuses_any_invalid_policy_listing_every_error(tmp_path: Path) -> None:
    source = write_source(
        tmp_path / "p",
        {
            "good.yaml": policy_text("good"),
            "typo.yaml": policy_text("typo").replace("path:", "pth:"),
            "broken.yaml": "apiVersion: [unclosed\n",
        },
    )
    result = opsctl(
        "bundle", "build", source, "-o", tmp_path / "out", "--name", "web", "--version", 1, ok=False
    )
    assert result.returncode == 1
    assert f"{source}/typo.yaml: spec.checks.beat.pth: unknown key 'pth'" in result.stderr
    assert f"{source}/broken.yaml: line" in result.stderr and "invalid YAML" in result.stderr
    assert "bundle not built" in result.stderr
    assert not (tmp_path / "out").exists()


def test_build_refuses_symlinks(tmp_path: Path) -> None:
    source = write_source(tmp_path / "p")
    (source / "shadow").symlink_to("/etc/shadow")
    result = opsctl(
        "bundle", "build", source, "-o", tmp_path / "out", "--name", "web", "--version", 1, ok=False
    )
    assert result.returncode == 1 and "shadow: not a regular file" in result.stderr


def test_inspect_shows_files_version_expiry_and_signers(tmp_path: Path, keys: Path) -> None:
    bundle = signed(tmp_path, keys, write_source(tmp_path / "p"), 4, 1, 3)
    text = opsctl("bundle", "inspect", bundle, "--trust", keys, "--threshold", 2).stdout
    assert "name     web  version 4" in text and "expires" in text
    assert "policy" in text and "heartbeat.yaml" in text and "script" in text
    assert text.count("valid, pinned key") == 2 and "threshold 2 of 2 required: met" in text
    doc = json.loads(opsctl("bundle", "inspect", bundle, "--json").stdout)
    assert doc["version"] == 4 and len(doc["signatures"]) == 2
    assert {f["path"] for f in doc["files"]} == {"heartbeat.yaml", "scripts/fix.sh"}


def test_diff_names_added_removed_and_changed_policies(tmp_path: Path, keys: Path) -> None:
    old = build(
        tmp_path / "a",
        write_source(
            tmp_path / "a" / "p",
            {
                "disk.yaml": policy_text("disk"),
                "web.yaml": policy_text("web"),
            },
        ),
        1,
    )
    new = build(
        tmp_path / "b",
        write_source(
            tmp_path / "b" / "p",
            {
                "web.yaml": policy_text("web", limit=300),
                "queue.yaml": policy_text("queue"),
            },
            {"scripts/fix.sh": "#!/bin/sh\necho fixed better\n"},
        ),
        2,
    )
    text = opsctl("bundle", "diff", old, new).stdout
    assert "web v1" in text and "web v2" in text
    assert "added    queue.yaml (queue)" in text
    assert "removed  disk.yaml (disk)" in text
    assert "changed  web.yaml (web)" in text
    assert "file     ~ scripts/fix.sh" in text
    assert "--- a/web.yaml" in text and "-      value: 120" in text and "+      value: 300" in text
    backwards = opsctl("bundle", "diff", new, old).stdout
    assert "WARNING: v1 is not newer than v2" in backwards


def test_root_rotation_commands(tmp_path: Path, keys: Path) -> None:
    opsctl("keys", "generate", tmp_path / "release-4")
    root1, root2 = tmp_path / "root.json", tmp_path / "root.2.json"
    pubs = [a for n in (1, 2, 3) for a in ("--key", keys / f"release-{n}.pub")]
    opsctl("root", "init", *pubs, "--threshold", 2, "--version", 1, "-o", root1)
    unsigned = opsctl("root", "verify", root1, ok=False)
    assert unsigned.returncode == 1 and "signed by 0 of its own keys" in unsigned.stderr
    opsctl("root", "sign", root1, "--key", keys / "release-1.key", "--key", keys / "release-2.key")
    assert "OK root v1, 3 keys, threshold 2" in opsctl("root", "verify", root1).stdout

    new_pubs = [
        "--key",
        keys / "release-2.pub",
        "--key",
        keys / "release-3.pub",
        "--key",
        tmp_path / "release-4.pub",
    ]
    opsctl("root", "init", *new_pubs, "--threshold", 2, "--version", 2, "-o", root2)
    opsctl(
        "root", "sign", root2, "--key", keys / "release-3.key", "--key", tmp_path / "release-4.key"
    )
    half = opsctl("root", "verify", root2, "--previous", root1, ok=False)
    assert half.returncode == 1 and "of the current root's keys" in half.stderr
    opsctl("root", "sign", root2, "--key", keys / "release-1.key", "--key", keys / "release-2.key")
    assert "OK root v2" in opsctl("root", "verify", root2, "--previous", root1).stdout


def test_build_reports_bad_options_and_an_empty_source_together(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = opsctl(
        "bundle",
        "build",
        tmp_path / "empty",
        "-o",
        tmp_path / "out",
        "--name",
        "Web",
        "--version",
        0,
        "--expires",
        "0s",
        ok=False,
    )
    assert result.returncode == 1
    for problem in (
        "--name: use lowercase",
        "--version: must be from 1",
        "--expires: must be",
        "empty: no policy files",
    ):
        assert problem in result.stderr
