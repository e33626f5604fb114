"""``disk``: space and inodes left on the filesystem holding a path.

Both run out in practice: bytes to logs and core dumps, inodes to mail queues and session files
(``df`` shows free space while every ``open(O_CREAT)`` fails). The path goes through the root
prefix, so an agent in a container with the host mounted at ``/host`` measures the host's disks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.checks.base import Check, CheckEnv, CheckType, Sample
from agent.errors import CheckError
from agent.policy.fields import Fields


@dataclass(frozen=True)
class DiskConfig:
    path: str


def parse(f: Fields) -> DiskConfig:
    path = f.string("path")
    if isinstance(path, str) and not path.startswith("/"):
        f.error("path", "must be an absolute path on the filesystem to measure, e.g. /var")
    return DiskConfig(path=path or "/")


class DiskCheck:
    def __init__(self, config: DiskConfig, env: CheckEnv) -> None:
        self.path: Path = env.host_path(config.path)

    def sample(self) -> Sample:
        try:
            usage = psutil.disk_usage(str(self.path))
            st = os.statvfs(self.path)
        except FileNotFoundError as exc:
            raise CheckError(f"{self.path}: no such file or directory") from exc
        except OSError as exc:
            raise CheckError(f"cannot stat filesystem of {self.path}: {exc.strerror}") from exc
        # Filesystems without a fixed inode table (btrfs, some FUSE) report zero inodes; that is
        # "cannot run out", not "100% used".
        inodes_used = (st.f_files - st.f_ffree) / st.f_files * 100.0 if st.f_files else 0.0
        metrics = {
            # psutil's percent is used / (used + free-for-users), as df shows it: blocks reserved
            # for root count as used, because an unprivileged service cannot write to them.
            "used_percent": round(float(usage.percent), 2),
            "free_bytes": float(usage.free),
            "inodes_used_percent": round(inodes_used, 2),
            "inodes_free": float(st.f_ffree),
        }
        free_mib = usage.free // (1 << 20)
        summary = f"{self.path}: {usage.percent:.1f}% used, {free_mib} MiB free, "
        return Sample(metrics, summary + f"{inodes_used:.1f}% inodes used")


def build(config: DiskConfig, env: CheckEnv) -> Check:
    return DiskCheck(config, env)


DISK = CheckType(
    name="disk",
    parse=parse,
    build=build,
    metrics=frozenset({"used_percent", "free_bytes", "inodes_used_percent", "inodes_free"}),
    description="Space and inodes on the filesystem holding a path.",
)
