"""Degraded mode: the journal cannot be written (disk full under the state dir, file locked).

No remediation may start while the journal refuses writes (its intent could not be recorded
first), so the main loop stops evaluating and probes the journal every ``UNWRITABLE_RETRY``
seconds; a clear error goes to the log (every ``UNWRITABLE_LOG`` seconds) and to systemd's
status line. The process stays up: a restart would not free the disk, and a crash loop would
hide the cause. The first write that succeeds ends it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from agent.clock import Clock
from agent.journal import Journal
from agent.logs import log_event
from agent.sdnotify import SystemdNotifier
from agent.sqlite_db import file_error

UNWRITABLE_RETRY = 1.0
"""While the journal cannot be written, probe it this often (nothing else runs meanwhile)."""
UNWRITABLE_LOG = 30.0


class DegradedMode:
    def __init__(
        self,
        journal: Journal,
        clock: Clock,
        systemd: SystemdNotifier,
        stop: threading.Event,
        summary: Callable[[], str],
    ) -> None:
        self.journal = journal
        self.clock = clock
        self.systemd = systemd
        self.stop = stop
        self.summary = summary
        """The ``systemctl status`` line to restore when the journal takes writes again."""
        self.since: float | None = None
        """Wall time the journal stopped taking writes (disk full, locked); None when fine."""
        self._next_log = 0.0

    def unwritable(self, exc: sqlite3.OperationalError) -> None:
        """A journal write failed for a transient reason: enter (or stay in) degraded mode,
        say so at most every ``UNWRITABLE_LOG`` seconds, then wait ``UNWRITABLE_RETRY``."""
        if self.since is None:
            self.since = self.clock.now()
            self._next_log = 0.0
        mono = self.clock.monotonic()
        if mono >= self._next_log:
            self._next_log = mono + UNWRITABLE_LOG
            problem = file_error(self.journal.path, exc)
            log_event(
                "journal_unwritable",
                logging.ERROR,
                path=str(self.journal.path),
                error=problem.problem,
                hint=f"{problem.hint}; no remediation starts until its intent can be recorded",
                since=self.since,
            )
            self.systemd.status(f"DEGRADED: cannot write {self.journal.path}: {exc}")
        self.stop.wait(UNWRITABLE_RETRY)

    def probe(self) -> None:
        """Probe with the agent heartbeat (raises while the journal still refuses writes); on
        success leave degraded mode and say so."""
        self.journal.put_agent_state({"heartbeat_at": self.clock.now()})
        since = self.since or self.clock.now()
        self.since = None
        log_event("journal_writable", path=str(self.journal.path), after=self.clock.now() - since)
        self.systemd.status(self.summary())
