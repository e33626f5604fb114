"""Placeholder module path for the shared process-table scan (owned by the checks work)."""

from __future__ import annotations


class ProcessTable:
    pass
