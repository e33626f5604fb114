"""The delivery pass every replica runs, and the per-stream memory that keeps it from sending an
assignment twice: two replicas' assigners on one real SQLite file (injected clock), each with its
own streams. An assignment issued on one replica reaches the other's stream on its next pass,
once however many passes run; the assigner and the Hello never repeat one; only an explicit retry
(the agent did not consume it) does; a new stream starts from what its Hello says it holds.
Approval decisions queued by another replica go out once across replicas, and expire."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.clock import FakeClock
from controlplane.assigner import Assigner
from controlplane.connections import Connection, Connections
from controlplane.rollout_lease import PURGE_EVERY, Delivery
from controlplane.storage.base import AgentRecord, AssignmentRequest, Signable
from controlplane.storage.base_decisions import DecisionRecord
from controlplane.storage.base_pki import CertificateRecord
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage
from stanch.v1 import fleet_pb2

D1, D2 = "1" * 64, "2" * 64
T0 = 1_800_000_000.0


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


def decision(nonce: str, host: str = "h1", ttl: float = 300.0, at: float = T0) -> DecisionRecord:
    return DecisionRecord(host, nonce, f"ap-{nonce}", f"env-{nonce}".encode(), at, at + ttl, "cp-c")


def decisions(conn: Connection) -> list[bytes]:
    """The decision envelopes queued on ``conn`` since the last call."""
    out: list[bytes] = []
    while not conn.queue.empty():
        message = conn.queue.get_nowait()
        assert message is not None and message.WhichOneof("body") == "approval_decision"
        out.append(message.approval_decision.envelope)
    return out


def test_a_queued_decision_goes_out_once_across_replicas(tmp_path: Path) -> None:
    """Two replicas on one file both hold a stream for h1 (a reconnect racing the old stream's
    teardown): the decision is sent by one of them, once, however many passes run; a stream
    that closed gives its claim back for the other; an expired one is never sent, and purged."""

    async def main() -> None:
        clock = FakeClock(T0)
        stores = [StorageThread(SqliteStorage(tmp_path / "cp.db")) for _ in range(2)]
        here, there = Connections(), Connections()
        passes = [
            Delivery(stores[0], here, clock, "cp-a"),
            Delivery(stores[1], there, clock, "cp-b"),
        ]
        db = stores[0].storage
        try:
            old, new = here.open("h1", {}), there.open("h1", {})
            other = here.open("h2", {})
            await stores[0].run(db.queue_decision, decision("n1"))
            assert await passes[0].deliver() == 1
            for _ in range(3):
                assert [await p.deliver() for p in passes] == [0, 0]
            assert decisions(old) == [b"env-n1"] and decisions(new) == []
            sent = db.decision("n1")
            assert sent is not None and (sent.delivered_by, sent.delivered_at) == ("cp-a", T0)

            old.close()  # a's stream ends; a does not know yet (still registered)
            await stores[0].run(db.queue_decision, decision("n2"))
            assert await passes[0].deliver() == 0  # closed: not claimed, or given back
            assert await passes[1].deliver() == 1 and decisions(new) == [b"env-n2"]
            moved = db.decision("n2")
            assert moved is not None and moved.delivered_by == "cp-b"

            await stores[0].run(db.queue_decision, decision("late", host="h2", ttl=30.0))
            clock.advance(30.0)  # expired before any pass ran
            assert [await p.deliver() for p in passes] == [0, 0]
            assert decisions(other) == []
            assert db.decision("late") is not None  # purged at most every PURGE_EVERY
            clock.advance(PURGE_EVERY)
            assert [await p.deliver() for p in passes] == [0, 0]
            assert db.decision("late") is None
            assert db.decision("n1") is not None  # a sent one is kept until it expires too
            clock.advance(300.0)
            assert [await p.deliver() for p in passes] == [0, 0]
            assert db.decision("n1") is None and db.decision("n2") is None
        finally:
            for store in stores:
                store.close()

    asyncio.run(main())


class BrokenRevocations(SqliteStorage):
    """Reading recent certificate revocations fails (the revocation sweep's query)."""

    def revoked_certificates_since(self, since: float) -> list[CertificateRecord]:
        raise OSError("disk I/O error (injected)")


def test_the_pass_cuts_revoked_streams_and_a_failing_sweep_stops_nothing(tmp_path: Path) -> None:
    """Each pass runs the revocation sweep (``controlplane.revocation_sweep``) first: a host
    revoked through another replica loses its stream here. A sweep that fails is logged and
    the assignments still go out."""

    async def main() -> None:
        clock = FakeClock(T0)
        store = StorageThread(SqliteStorage(tmp_path / "cp.db"))
        broken = StorageThread(BrokenRevocations(tmp_path / "cp.db"))
        remote = Assigner(
            StorageThread(SqliteStorage(tmp_path / "cp.db")), Connections(), sign, clock
        )
        here, elsewhere = Connections(), Connections()
        delivery = Delivery(store, here, clock, "cp-a")
        failing = Delivery(broken, elsewhere, clock, "cp-b")
        try:
            for host in ("h1", "h2"):
                await store.run(store.storage.upsert_agent, AgentRecord(host, {}))
            revoked, kept = here.open("h1", {}), here.open("h2", {})
            await store.run(store.storage.revoke_host, "h1", T0, "alice", "stolen")
            assert await delivery.deliver() == 0
            assert revoked.closed and not kept.closed

            stream = elsewhere.open("h2", {})
            (record,) = await remote.issue([AssignmentRequest("h2", D1, 1, "r")])
            assert await failing.deliver() == 1  # the sweep raised; the assignment went out
            assert drained(stream) == [record.envelope]
        finally:
            for s in (store, broken, remote.store):
                s.close()

    asyncio.run(main())
