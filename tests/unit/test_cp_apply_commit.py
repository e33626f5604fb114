"""Group commit of apply results (``controlplane.apply_commit``) on a real SQLite file."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from controlplane.apply_commit import ApplyCommitter
from controlplane.storage.base import (
    AgentRecord,
    AppliedRecord,
    ApplyResult,
    AssignmentRecord,
    AssignmentRequest,
    RolloutHost,
    Signable,
)
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage


class CountingStorage(SqliteStorage):
    """Counts ``record_applies`` transactions, and can be made to fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[int] = []
        self.fail = threading.Event()

    def record_applies(self, results: Sequence[ApplyResult]) -> list[AppliedRecord | None]:
        self.calls.append(len(results))
        if self.fail.is_set():
            raise OSError("disk full")
        return super().record_applies(results)


def sign(payload: Signable) -> bytes:
    return repr(payload).encode()


def fleet(storage: SqliteStorage, n: int) -> list[AssignmentRecord]:
    hosts = [f"h{i:02d}" for i in range(n)]
    for host in hosts:
        storage.upsert_agent(AgentRecord(host, {}, bundle_digest="d1", bundle_version=1))
    requests = [
        AssignmentRequest(h, "d2", 2, "r", RolloutHost("r", h, 0, "d1", 1, 0, 1.0)) for h in hosts
    ]
    return storage.issue_assignments(requests, 1.0, sign)


def result(a: AssignmentRecord, applied: bool = True) -> ApplyResult:
    return ApplyResult(a.host_id, a.seq, "d2", applied, "", 2.0, "ok")


def test_a_burst_of_results_is_one_transaction(tmp_path: Path) -> None:
    async def main() -> None:
        storage = CountingStorage(tmp_path / "cp.db")
        store = StorageThread(storage)
        issued = fleet(storage, 40)
        committer = ApplyCommitter(store, window=0.01)
        done = await asyncio.gather(*(committer.submit(result(a)) for a in issued))
        assert storage.calls == [40] and committer.commits == 1
        assert all(d is not None and d.rollout_host is not None for d in done)
        assert [d.assignment.host_id for d in done if d is not None] == [a.host_id for a in issued]
        assert {h.status for h in storage.rollout_hosts("r")} == {"applied"}
        unknown = ApplyResult("h00", 999, "d2", True, "", 3.0)
        assert await committer.submit(unknown) is None
        store.close()

    asyncio.run(main())


def test_a_group_is_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        storage = CountingStorage(tmp_path / "cp.db")
        store = StorageThread(storage)
        issued = fleet(storage, 25)
        committer = ApplyCommitter(store, window=0.01, max_results=10)
        await asyncio.gather(*(committer.submit(result(a)) for a in issued))
        assert storage.calls == [10, 10, 5]
        store.close()

    asyncio.run(main())


def test_a_failed_commit_fails_every_result_and_records_none(tmp_path: Path) -> None:
    async def main() -> None:
        storage = CountingStorage(tmp_path / "cp.db")
        store = StorageThread(storage)
        issued = fleet(storage, 3)
        committer = ApplyCommitter(store, window=0.005)
        storage.fail.set()
        outcomes = await asyncio.gather(
            *(committer.submit(result(a)) for a in issued), return_exceptions=True
        )
        assert all(isinstance(o, OSError) for o in outcomes)
        assert {h.status for h in storage.rollout_hosts("r")} == {"assigned"}
        storage.fail.clear()
        again = await committer.submit(result(issued[0]))  # the agent resends; now it lands
        assert again is not None and again.assignment.status == "applied"
        store.close()

    asyncio.run(main())
