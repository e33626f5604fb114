"""Group commit for apply results: one storage transaction for many agents' ``ApplyResult``.

A rollout wave sends thousands of assignments at once and their results come back together. One
transaction (one fsync) per result, on the single storage thread, would cap a wave near the disk's
fsync rate; here every result arriving within ``window`` seconds (at most ``max_results``) is
recorded in one ``record_applies`` transaction, the assignment and its rollout-host row together.

No background task: the first result of a burst starts a short-lived drain task, which waits the
window, commits what is queued, and again while more arrived during the commit, then ends. Each
caller's ``submit`` returns only after the transaction holding its result has committed, so
nothing is acted upon (or logged as applied) before it is durable. A failed commit fails every
result in it: their streams end and the agents resend (or their next Hello says what they run).
"""

from __future__ import annotations

import asyncio
import logging

from controlplane.storage.base import AppliedRecord, ApplyResult
from controlplane.storage.runner import StorageThread

log = logging.getLogger("stanch.cp.applies")
WINDOW = 0.003
MAX_RESULTS = 1_000


class ApplyCommitter:
    def __init__(
        self, store: StorageThread, window: float = WINDOW, max_results: int = MAX_RESULTS
    ) -> None:
        self.store = store
        self.window = window
        self.max_results = max_results
        self._pending: list[tuple[ApplyResult, asyncio.Future[AppliedRecord | None]]] = []
        self._drain: asyncio.Task[None] | None = None
        self.commits = 0
        self.results = 0

    async def submit(self, result: ApplyResult) -> AppliedRecord | None:
        """Return once ``result`` is durable: its updated records (None: unknown assignment)."""
        future: asyncio.Future[AppliedRecord | None] = asyncio.get_running_loop().create_future()
        self._pending.append((result, future))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        await asyncio.sleep(self.window)  # let the rest of the burst arrive
        while self._pending:
            group = self._pending[: self.max_results]
            del self._pending[: self.max_results]
            await self._commit(group)

    async def _commit(
        self, group: list[tuple[ApplyResult, asyncio.Future[AppliedRecord | None]]]
    ) -> None:
        try:
            done = await self.store.run(
                self.store.storage.record_applies, [result for result, _ in group]
            )
        except Exception as exc:  # every waiter learns; nothing was recorded
            log.error("apply-result commit failed (%d results): %s", len(group), exc)
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        self.commits += 1
        self.results += len(group)
        for (_, future), record in zip(group, done, strict=True):
            if not future.done():
                future.set_result(record)
