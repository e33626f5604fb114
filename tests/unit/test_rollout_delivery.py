"""The delivery pass every replica runs, and the per-stream memory that keeps it from sending an
assignment twice: two replicas' assigners on one real SQLite file (injected clock), each with its
own streams. An assignment issued on one replica reaches the other's stream on its next pass,
once however many passes run; the assigner and the Hello never repeat one; only an explicit retry
(the agent did not consume it) does; a new stream starts from what its Hello says it holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.clock import FakeClock
from controlplane.assigner import Assigner
from controlplane.connections import Connection, Connections
from controlplane.rollout_lease import Delivery
from controlplane.storage.base import AgentRecord, AssignmentRequest, Signable
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage
from stanch.v1 import fleet_pb2

D1, D2 = "1" * 64, "2" * 64


def sign(item: Signable) -> bytes:
    return item.envelope().payload


def drained(conn: Connection) -> list[bytes]:
    """The assignment envelopes queued on ``conn`` since the last call."""
    out: list[bytes] = []
    while not conn.queue.empty():
        message = conn.queue.get_nowait()
        assert isinstance(message, fleet_pb2.ControlMessage)
        out.append(message.assignment.envelope)
    return out


def test_each_sequence_goes_out_once_per_stream_whoever_finds_it(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        stores = [StorageThread(SqliteStorage(tmp_path / "cp.db")) for _ in range(2)]
        here, there = Connections(), Connections()
        local = Assigner(stores[0], here, sign, clock)
        remote = Assigner(stores[1], there, sign, clock)
        delivery = Delivery(stores[0], here)
        try:
            await stores[0].run(stores[0].storage.upsert_agent, AgentRecord("h1", {}))
            conn = here.open("h1", {}, held_seq=0)
            assert await delivery.deliver() == 0  # nothing issued yet

            (first,) = await local.issue([AssignmentRequest("h1", D1, 1, "r")])
            assert drained(conn) == [first.envelope] and conn.sent_seq == first.seq
            assert await delivery.deliver() == 0  # the assigner sent it already

            (second,) = await remote.issue([AssignmentRequest("h1", D2, 2, "r")])
            assert drained(conn) == []  # issued on the other replica: not sent from there
            assert await delivery.deliver() == 1
            assert drained(conn) == [second.envelope]
            for _ in range(3):
                assert await delivery.deliver() == 0
            assert drained(conn) == []

            assert not conn.send_assignment(second)  # the Hello path finds it sent
            assert conn.send_assignment(second, again=True)  # a retry repeats it on purpose
            assert drained(conn) == [second.envelope]

            again = here.open("h1", {}, held_seq=first.seq)  # reconnect holding only the first
            assert conn.closed and await delivery.deliver() == 1
            assert drained(again) == [second.envelope]
            newer = here.open("h1", {}, held_seq=second.seq)  # holds it: nothing to send
            assert await delivery.deliver() == 0 and drained(newer) == []

            await stores[0].run(
                stores[0].storage.record_apply, "h1", second.seq, D2, False, "bad", 1.0
            )
            fresh = here.open("h1", {}, held_seq=first.seq)
            assert await delivery.deliver() == 0  # rejected, not pending: left to retries
            assert drained(fresh) == []
        finally:
            for store in stores:
                store.close()

    asyncio.run(main())
