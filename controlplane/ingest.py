"""Group commit for reports, and batched presence: the two write paths that scale with the fleet.

``ReportIngestor``: every agent stream hands over its batch and waits; one writer task takes
*everything* queued by then and stores it in one transaction (one fsync), then wakes every waiter,
which acks its agent. While that commit runs, the next batches pile up and share the following
one. One fsync per report caps a disk near 1,000 durable rows/s; one per group does not. A failed
commit fails every waiter: nothing is acked, so each agent keeps its reports and sends them again.

``Presence``: heartbeats only move ``last_seen``; they are kept in memory and flushed every few
seconds in one transaction, so 10,000 agents beating every 10 s cost one write per flush, not 1,000
per second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from controlplane.instrumentation import Instruments, NoMetrics
from controlplane.storage.base import Report
from controlplane.storage.runner import StorageThread

log = logging.getLogger("stanch.cp.ingest")
MAX_GROUP_ROWS = 5_000


class ReportIngestor:
    def __init__(
        self,
        store: StorageThread,
        on_commit: Callable[[Sequence[Report]], None] | None = None,
        max_rows: int = MAX_GROUP_ROWS,
        metrics: Instruments | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or NoMetrics()
        self.on_commit = on_commit
        self.max_rows = max_rows
        self._pending: list[tuple[Sequence[Report], asyncio.Future[int]]] = []
        self._wake = asyncio.Event()
        self.commits = 0
        self.rows = 0
        self.duplicates = 0
        self.inflight = 0
        """Rows in the commit running now."""

    @property
    def pending_rows(self) -> int:
        """Reports handed over and not yet durable: queued, or in the running commit."""
        return self.inflight + sum(len(reports) for reports, _ in self._pending)

    async def submit(self, reports: Sequence[Report]) -> int:
        """Return once ``reports`` are durable: how many were new (the rest were redeliveries)."""
        if not reports:
            return 0
        self.metrics.reports_received(len(reports))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((reports, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group = self._take()
                await self._commit(group)

    def _take(self) -> list[tuple[Sequence[Report], asyncio.Future[int]]]:
        """The oldest batches, up to ``max_rows`` rows (at least one batch). Sliced off in one
        go: popping the head one by one moves the whole queue each time, and under load it holds
        tens of thousands of batches."""
        pending, limit = self._pending, self.max_rows
        taken, rows = 0, 0
        while taken < len(pending) and (not taken or rows + len(pending[taken][0]) <= limit):
            rows += len(pending[taken][0])
            taken += 1
        group = pending[:taken]
        del pending[:taken]
        return group

    async def _commit(self, group: list[tuple[Sequence[Report], asyncio.Future[int]]]) -> None:
        flat = [r for reports, _ in group for r in reports]
        started, self.inflight = time.monotonic(), len(flat)
        try:
            new = await self.store.run(self.store.storage.insert_reports, flat)
        except Exception as exc:  # every waiter learns; nothing is acked
            self.metrics.reports_committed(len(flat), None, time.monotonic() - started)
            log.error("report commit failed (%d rows, not acked): %s", len(flat), exc)
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self.inflight = 0
        self.metrics.reports_committed(len(flat), new, time.monotonic() - started)
        self.commits += 1
        self.rows += len(flat)
        self.duplicates += len(flat) - new
        for reports, future in group:
            if not future.done():
                future.set_result(len(reports))
        if self.on_commit is not None:
            self.on_commit(flat)


class Presence:
    def __init__(
        self, store: StorageThread, interval: float = 5.0, metrics: Instruments | None = None
    ) -> None:
        self.store = store
        self.interval = interval
        self.metrics = metrics or NoMetrics()
        self._seen: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self.live: dict[str, float] = {}
        """Latest heartbeat per host, including ones not flushed yet (rollout gates read it)."""

    def seen(self, host_id: str, at: float, health: Mapping[str, Any]) -> None:
        self._seen[host_id] = (at, health)
        self.live[host_id] = max(at, self.live.get(host_id, 0.0))

    async def flush(self) -> None:
        if not self._seen:
            return
        batch, self._seen = self._seen, {}
        try:
            await self.store.run(self.store.storage.touch_agents, batch)
        except Exception:
            self._seen = {**batch, **self._seen}  # newer beats win; retried next flush
            self.metrics.presence_flushed(len(batch), False)
            raise
        self.metrics.presence_flushed(len(batch), True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as exc:  # presence is best effort; the next flush retries
                log.warning("presence flush failed: %s", exc)
