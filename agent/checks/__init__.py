"""The registry of check types: an explicit dict, one entry per metric source.

Modules here keep heavy imports (http.client, ssl, socket servers) inside ``sample()`` so that an
agent that never runs an HTTP check never pays for them.
"""

from __future__ import annotations

from agent.checks.base import CheckType
from agent.checks.command import COMMAND
from agent.checks.disk import DISK
from agent.checks.file import FILE
from agent.checks.http import HTTP
from agent.checks.port import PORT
from agent.checks.process import PROCESS
from agent.checks.prometheus import PROMETHEUS
from agent.checks.resources import CPU, LOAD, MEMORY
from agent.checks.systemd import SYSTEMD

CHECK_TYPES: dict[str, CheckType] = {
    FILE.name: FILE,
    CPU.name: CPU,
    LOAD.name: LOAD,
    MEMORY.name: MEMORY,
    DISK.name: DISK,
    PROCESS.name: PROCESS,
    PORT.name: PORT,
    HTTP.name: HTTP,
    SYSTEMD.name: SYSTEMD,
    COMMAND.name: COMMAND,
    PROMETHEUS.name: PROMETHEUS,
}
