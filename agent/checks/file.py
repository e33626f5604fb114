"""``file``: does a path exist, how old is it, how big is it (log rotation, stale heartbeats)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from agent.checks.base import Check, CheckEnv, CheckType, Sample
from agent.policy.fields import Fields


@dataclass(frozen=True)
class FileConfig:
    path: str


def parse(f: Fields) -> FileConfig:
    path = f.string("path")
    if isinstance(path, str) and not path.startswith("/"):
        f.error("path", "must be an absolute path")
    return FileConfig(path=path or "/")


class FileCheck:
    def __init__(self, config: FileConfig, env: CheckEnv) -> None:
        self.path = env.host_path(config.path)

    def sample(self) -> Sample:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return Sample({"exists": 0.0, "age_seconds": 0.0, "size_bytes": 0.0}, "missing")
        age = max(0.0, time.time() - st.st_mtime)
        return Sample(
            {"exists": 1.0, "age_seconds": round(age, 3), "size_bytes": float(st.st_size)},
            f"{st.st_size} bytes, modified {age:.0f}s ago",
        )


def build(config: FileConfig, env: CheckEnv) -> Check:
    return FileCheck(config, env)


FILE = CheckType(
    name="file",
    parse=parse,
    build=build,
    metrics=frozenset({"exists", "age_seconds", "size_bytes"}),
    description="A file's existence, age (seconds since last modification) and size.",
)
