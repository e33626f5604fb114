"""cpu, load, memory, disk and file checks against the real kernel and real filesystems.

Disk and file checks run with ``CheckEnv.root`` pointed at a fixture tree, as the agent runs in a
container with the host mounted at ``/host``. The fill-up test mounts a tiny tmpfs and skips
itself when it cannot (not root, no mount permission).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.checks import CHECK_TYPES
from agent.checks.testing import build_check as build
from agent.errors import CheckError


def test_cpu_sees_a_busy_loop() -> None:
    check = build("cpu", {})
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass  # Burn one CPU for a moment so the percent cannot be zero.
    percent = check.sample().metrics["percent"]
    assert isinstance(percent, float) and 0.0 < percent <= 100.0


def test_load_matches_the_kernel() -> None:
    metrics = build("load", {}).sample().metrics
    assert frozenset(metrics) == CHECK_TYPES["load"].metrics
    load1 = os.getloadavg()[0]
    assert abs(float(metrics["load1"]) - load1) < 1.0
    cpus = psutil.cpu_count() or 1
    assert metrics["load1_per_cpu"] == pytest.approx(float(metrics["load1"]) / cpus, abs=0.01)


def test_memory_matches_the_kernel() -> None:
    metrics = build("memory", {}).sample().metrics
    assert frozenset(metrics) == CHECK_TYPES["memory"].metrics
    total = psutil.virtual_memory().total
    assert 0 < float(metrics["available_bytes"]) <= total
    assert 0.0 <= float(metrics["used_percent"]) <= 100.0
    assert 0.0 <= float(metrics["swap_used_percent"]) <= 100.0


def test_disk_reads_the_path_under_the_root_prefix(tmp_path: Path) -> None:
    (tmp_path / "var" / "lib").mkdir(parents=True)
    check = build("disk", {"path": "/var/lib"}, root=tmp_path)
    metrics = check.sample().metrics
    assert frozenset(metrics) == CHECK_TYPES["disk"].metrics
    usage = shutil.disk_usage(tmp_path)
    assert abs(float(metrics["free_bytes"]) - usage.free) < 64 << 20
    assert 0.0 <= float(metrics["inodes_used_percent"]) <= 100.0
    assert str(tmp_path / "var" / "lib") in check.sample().summary


def test_disk_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckError, match="no such file or directory"):
        build("disk", {"path": "/nope"}, root=tmp_path).sample()


def test_file_check_under_the_root_prefix(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    beat = tmp_path / "run" / "heartbeat"
    beat.write_text("ok")
    old = time.time() - 120
    os.utime(beat, (old, old))
    metrics = build("file", {"path": "/run/heartbeat"}, root=tmp_path).sample().metrics
    assert metrics["exists"] == 1.0 and metrics["size_bytes"] == 2.0
    assert 119 <= float(metrics["age_seconds"]) < 130
    assert build("file", {"path": "/run/gone"}, root=tmp_path).sample().metrics["exists"] == 0.0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with 64 inodes mounted at ``<tmp>/data``."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mnt = tmp_path / "data"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "tmpfs", str(mnt)]
    done = subprocess.run(cmd, capture_output=True, timeout=10, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10, check=False)


def test_disk_sees_a_filesystem_fill_up(tiny_fs: Path) -> None:
    check = build("disk", {"path": "/data"}, root=tiny_fs.parent)
    before = check.sample().metrics
    assert float(before["used_percent"]) < 10.0
    (tiny_fs / "blob").write_bytes(b"x" * (900 * 1024))
    for i in range(50):
        (tiny_fs / f"f{i}").touch()
    after = check.sample().metrics
    assert float(after["used_percent"]) > 80.0
    assert float(after["free_bytes"]) < 200 * 1024
    assert float(after["inodes_used_percent"]) > 75.0
    assert float(after["inodes_free"]) < 14
