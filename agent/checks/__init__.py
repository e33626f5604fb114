"""The registry of check types: an explicit dict, one entry per metric source.

Modules here keep heavy imports (http.client, ssl, socket servers) inside ``sample()`` so that an
agent that never runs an HTTP check never pays for them.
"""

from __future__ import annotations

from agent.checks.base import CheckType
from agent.checks.file import FILE

CHECK_TYPES: dict[str, CheckType] = {
    FILE.name: FILE,
}
