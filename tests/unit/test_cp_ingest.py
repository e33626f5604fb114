"""Group commit: batches that arrive while a commit runs share the next one; a failed commit
acks nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from controlplane.ingest import ReportIngestor
from controlplane.storage.base import Report
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage


class SlowStorage(SqliteStorage):
    """A disk whose fsync takes 50 ms (injected, not patched), and that can be made to fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[int] = []
        self.fail = threading.Event()

    def insert_reports(self, reports: Sequence[Report]) -> int:
        self.calls.append(len(reports))
        time.sleep(0.05)
        if self.fail.is_set():
            raise OSError("disk full")
        return super().insert_reports(reports)


def batch(host: str, n: int = 5) -> list[Report]:
    return [Report(host, i, "execution", "p", 1.0, "fixed", "", "{}") for i in range(n)]


def test_concurrent_batches_share_commits(tmp_path: Path) -> None:
    async def main() -> None:
        storage = SlowStorage(tmp_path / "cp.db")
        store = StorageThread(storage)
        seen: list[int] = []
        ingestor = ReportIngestor(store, on_commit=lambda rows: seen.append(len(rows)))
        writer = asyncio.create_task(ingestor.run())
        results = await asyncio.gather(*(ingestor.submit(batch(f"h{i}")) for i in range(20)))
        assert results == [5] * 20
        assert sum(storage.calls) == 100 and len(storage.calls) <= 3
        assert sum(seen) == 100
        again = await ingestor.submit(batch("h0"))  # redelivery: acked, not stored twice
        assert again == 5 and ingestor.duplicates == 5
        writer.cancel()
        store.close()

    asyncio.run(main())


def test_a_failed_commit_fails_every_waiter(tmp_path: Path) -> None:
    async def main() -> None:
        storage = SlowStorage(tmp_path / "cp.db")
        storage.fail.set()
        store = StorageThread(storage)
        ingestor = ReportIngestor(store)
        writer = asyncio.create_task(ingestor.run())
        outcomes = await asyncio.gather(
            *(ingestor.submit(batch(f"h{i}")) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(o, OSError) for o in outcomes)
        storage.fail.clear()
        assert await ingestor.submit(batch("h0")) == 5  # the agent resends; now it lands
        writer.cancel()
        store.close()

    asyncio.run(main())


def test_a_group_is_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        storage = SlowStorage(tmp_path / "cp.db")
        store = StorageThread(storage)
        ingestor = ReportIngestor(store, max_rows=10)
        writer = asyncio.create_task(ingestor.run())
        await asyncio.gather(*(ingestor.submit(batch(f"h{i}")) for i in range(6)))
        assert max(storage.calls) <= 10
        writer.cancel()
        store.close()

    asyncio.run(main())


@pytest.mark.parametrize("n", [0])
def test_an_empty_batch_needs_no_commit(tmp_path: Path, n: int) -> None:
    async def main() -> None:
        store = StorageThread(SlowStorage(tmp_path / "cp.db"))
        assert await ReportIngestor(store).submit(batch("h", n)) == 0
        store.close()

    asyncio.run(main())
