"""Shared settings and the input counter of the fuzz pass (``make fuzz``).

``FUZZ`` is applied per test (``@FUZZ``), never loaded as the global Hypothesis profile, so the
unit tests keep their own example counts even when this directory is collected with them.
``STANCH_FUZZ_EXAMPLES`` scales every target (the number below is per target). Each target
counts the inputs it really executed; ``conftest.py`` prints the counts at the end of the run,
the figure ``docs/testing.md`` records.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("STANCH_FUZZ_EXAMPLES", "3000"))
COUNTS: Counter[str] = Counter()

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def count(target: str) -> None:
    COUNTS[target] += 1
