"""Group commit: batches that arrive while a commit runs share the next one; a failed commit
acks nothing."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from controlplane.connections import Connection
from controlplane.ingest import ReportIngestor
from controlplane.storage.base import Report
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage
from controlplane.stream_acks import StreamAcks


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


def test_a_streams_batches_in_one_commit_are_acked_in_one_message(tmp_path: Path) -> None:
    """The reader hands batches over without waiting: those sharing a commit share one Ack,
    sent only after that commit."""

    async def main() -> None:
        storage = SlowStorage(tmp_path / "cp.db")
        store = StorageThread(storage)
        ingestor = ReportIngestor(store)
        writer = asyncio.create_task(ingestor.run())
        conn = Connection("h1", {})
        acks = StreamAcks(conn)
        for first in (0, 5, 10):
            reports = [
                Report("h1", first + i, "execution", "p", 1.0, "", "", "{}") for i in range(5)
            ]
            acks.handed_over()
            ingestor.enqueue(reports, functools.partial(acks.done, [r.id for r in reports]))
        assert conn.queue.empty()  # nothing durable yet: nothing acked
        await asyncio.wait_for(acks.drained(), 10)
        message = conn.queue.get_nowait()
        assert message is not None and list(message.ack.report_ids) == list(range(15))
        assert conn.queue.empty() and storage.calls == [15]
        writer.cancel()
        store.close()

    asyncio.run(main())


def test_a_failed_commit_acks_nothing_and_ends_the_stream(tmp_path: Path) -> None:
    async def main() -> None:
        storage = SlowStorage(tmp_path / "cp.db")
        storage.fail.set()
        store = StorageThread(storage)
        ingestor = ReportIngestor(store)
        writer = asyncio.create_task(ingestor.run())
        conn = Connection("h1", {})
        acks = StreamAcks(conn)
        acks.handed_over()
        ingestor.enqueue(batch("h1"), functools.partial(acks.done, [0, 1, 2, 3, 4]))
        await asyncio.wait_for(acks.drained(), 10)
        assert conn.closed and conn.queue.get_nowait() is None  # the close sentinel, no Ack
        writer.cancel()
        store.close()

    asyncio.run(main())


def test_a_stream_waits_when_too_many_batches_are_in_flight(tmp_path: Path) -> None:
    async def main() -> None:
        store = StorageThread(SlowStorage(tmp_path / "cp.db"))
        ingestor = ReportIngestor(store)
        acks = StreamAcks(Connection("h1", {}), limit=2)
        for i in range(2):
            acks.handed_over()
            ingestor.enqueue(batch("h1", 1), functools.partial(acks.done, [i]))
        room = asyncio.create_task(acks.room())
        await asyncio.sleep(0.1)
        assert not room.done()  # no writer yet: nothing committed, no room
        writer = asyncio.create_task(ingestor.run())
        await asyncio.wait_for(room, 10)
        writer.cancel()
        store.close()

    asyncio.run(main())
