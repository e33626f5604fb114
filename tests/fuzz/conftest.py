"""Prints how many inputs each fuzz target executed (see ``fuzzing.py``)."""

from __future__ import annotations

import pytest
from fuzzing import COUNTS, EXAMPLES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.section("fuzz inputs executed")
    for target, n in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{target:<40} {n:>8}")
    total = sum(COUNTS.values())
    terminalreporter.write_line(f"{'total':<40} {total:>8}  (max_examples {EXAMPLES} per target)")
