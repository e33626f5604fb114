"""Forward bundle rejections to the outbox, whoever caused them.

A bundle can be refused by an assignment the control plane sent or by an operator running
``stanch-agent bundle install`` on the host. Either way ``BundleStore`` appends it to
``bundle-rejections.jsonl``; this module is the single place that turns new lines of that log into
``rejection`` reports, so each refusal is reported once, however it came. The watermark (the
``at`` of the newest forwarded line) lives in ``agent_state`` and survives restarts.

Two callers scan: the heartbeat loop (in a worker thread) and the applier right after its verifier
ran. A lock keeps them from reading the same watermark and reporting a line twice, and the applier
registers its context (``expect``) *before* the verifier writes the line, so whichever scan sees
the line first reports it with the assignment's seq and digest.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.bundle.rejection import read_rejections
from agent.fleet.outbox import Outbox
from agent.journal import Journal, Report

WATERMARK_KEY = "rejections_reported_at"


class RejectionForwarder:
    def __init__(self, state_dir: Path, journal: Journal, outbox: Outbox) -> None:
        self.state_dir = state_dir
        self.journal = journal
        self.outbox = outbox
        self._mtime: int | None = None
        self._lock = threading.Lock()
        self._context: dict[str, Mapping[str, Any]] = {}

    def expect(self, file: str, context: Mapping[str, Any]) -> None:
        """Add ``context`` to the report of a rejection of ``file``, by whichever scan sees it."""
        with self._lock:
            self._context[file] = dict(context)

    def forget(self, file: str) -> None:
        with self._lock:
            self._context.pop(file, None)

    def scan(self) -> int:
        """Queue rejections newer than the watermark; returns how many. Cheap when the log did
        not change (one stat)."""
        with self._lock:
            return self._scan()

    def _scan(self) -> int:
        log = self.state_dir / "bundle-rejections.jsonl"
        try:
            mtime = log.stat().st_mtime_ns
        except FileNotFoundError:
            return 0
        if mtime == self._mtime:
            return 0
        raw = self.journal.agent_state().get(WATERMARK_KEY, 0.0)
        watermark = float(raw) if isinstance(raw, int | float) else 0.0
        fresh = [r for r in read_rejections(self.state_dir) if r.at > watermark]
        with self.journal.transaction() as db:
            for rejection in fresh:
                extra = self._context.get(rejection.file, {"source": "bundle_store"})
                body = {**asdict(rejection), **extra}
                name = rejection.name or "bundle"
                report = Report("rejection", name, rejection.at, "rejected", rejection.reason, body)
                self.outbox.add(db, report)
            if fresh:
                newest = max(r.at for r in fresh)
                db.execute(
                    "INSERT INTO agent_state (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (WATERMARK_KEY, repr(newest)),
                )
        self._mtime = mtime
        return len(fresh)
