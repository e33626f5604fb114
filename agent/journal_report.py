"""Reports written with the journal records they report, and the connection they share.

A ``Report`` is one record going upstream (see ``agent.fleet.outbox``). The ``Reporter`` set on
the journal is called inside the very write transaction that created the record, so a crash can
never keep the record and lose its report. ``ReportingDb`` is the base of the journal's tables
(``agent.journal.Journal`` and the classes it combines): one SQLite connection plus that reporter.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from agent.sqlite_db import SqliteDb


@dataclass(frozen=True)
class Report:
    """One record reported upstream: a new decision row, a finished or interrupted execution,
    an escalation, a bundle rejection. ``body`` is the whole record; the reporter bounds it."""

    kind: str
    """decision | execution | escalation | rejection"""
    policy: str
    at: float
    outcome: str
    reason: str
    body: Mapping[str, Any]


class Reporter(Protocol):
    """Called inside the journal's write transaction (``db``) that created the record."""

    def add(self, db: sqlite3.Connection, report: Report) -> None: ...


class ReportingDb(SqliteDb):
    """The state file's connection and the reporter its writes call. ``reporter`` is set by
    ``Journal.__init__``."""

    reporter: Reporter | None

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT) for tables kept in this file by other
        modules (the outbox)."""
        return self._tx()

    def report(self, report: Report) -> None:
        """Hand ``report`` to the reporter in a transaction of its own (a record that is not a
        journal row, such as an escalation). A no-op with no reporter."""
        if self.reporter is None:
            return
        with self._tx() as db:
            self.reporter.add(db, report)

    def _report(self, db: sqlite3.Connection, report: Report) -> None:
        if self.reporter is not None:
            self.reporter.add(db, report)
