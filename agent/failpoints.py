"""Named failpoints, as etcd's gofail: the fault tests tell the agent where to die.

``STANCH_FAILPOINTS=crash_after_intent`` makes ``hit("crash_after_intent")`` end the process at
once with ``os._exit(137)``, exactly like kill -9 at that line: no cleanup, no journal update.
The variable is read once at import; an agent started without it pays one set lookup per hit.
"""

from __future__ import annotations

import os

ENABLED = frozenset(filter(None, os.environ.get("STANCH_FAILPOINTS", "").split(",")))


def hit(name: str) -> None:
    if name in ENABLED:
        os._exit(137)
