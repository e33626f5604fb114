"""``log``: append one JSON line per notification to a file, fsynced.

For air-gapped hosts (a log shipper picks the file up), demos and tests: delivered means on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.policy.fields import Fields
from agent.sinks.base import DeliveryError, SinkType


@dataclass(frozen=True)
class LogConfig:
    path: str


def parse_log(f: Fields) -> LogConfig:
    path = f.string("path")
    if isinstance(path, str) and not path.startswith("/"):
        f.error("path", "must be an absolute path, e.g. /var/log/stanch/escalations.jsonl")
    return LogConfig(path or "/")


class LogSink:
    def __init__(self, config: LogConfig) -> None:
        self.config = config

    def send(self, payload: Mapping[str, Any]) -> None:
        line = (json.dumps(dict(payload), default=str, sort_keys=True) + "\n").encode()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.config.path, flags, 0o640)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DeliveryError(
                f"cannot append to {self.config.path}: {exc.strerror}", retryable=True
            ) from None


LOG = SinkType(
    "log",
    parse_log,
    LogSink,
    "Append one JSON line per notification to a file, fsynced.",
)
