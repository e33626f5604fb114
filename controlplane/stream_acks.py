"""Acks for one agent stream's report batches: sent after the commit, several batches per message.

An agent keeps a few report batches in flight. The stream's reader hands each one to the group
commit (``ReportIngestor.enqueue``) and reads on, rather than waiting for that commit before it
reads the next batch; so an agent's batches that arrive together share one commit, and their ids
go back in one ``Ack`` (gathered with ``call_soon`` after the commit tells every batch's owner in
turn). Nothing is acked before it is durable: the ids are added only when the commit that holds
them has succeeded. A failed commit ends the stream (nothing of it acked; the agent sends the
batches again on its next stream, and the store ignores any it already has).

Back-pressure: at most ``limit`` batches per stream are waiting for a commit; the reader stops
reading until one is durable, so a fast or misbehaving agent cannot queue without bound. When the
agent's side ends, the reader waits for the batches still in flight, so their acks go out before
the stream closes, as they did when the reader waited for every commit.
"""

from __future__ import annotations

import asyncio
import logging

from controlplane.connections import Connection
from stanch.v1 import fleet_pb2

log = logging.getLogger("stanch.cp.fleet")
MAX_INFLIGHT = 16
"""Report batches per stream handed to the group commit and not yet durable."""


class StreamAcks:
    def __init__(self, conn: Connection, limit: int = MAX_INFLIGHT) -> None:
        self.conn = conn
        self.limit = limit
        self.inflight = 0
        self._ids: list[int] = []
        self._flush_scheduled = False
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()

    def handed_over(self) -> None:
        """One more batch waits for its commit."""
        self.inflight += 1
        self._idle.clear()
        if self.inflight >= self.limit:
            self._room.clear()

    def done(self, ids: list[int], error: BaseException | None) -> None:
        """The commit holding a batch with ``ids`` succeeded (``error`` None) or failed."""
        self.inflight -= 1
        if self.inflight < self.limit:
            self._room.set()
        if self.inflight == 0:
            self._idle.set()
        if error is not None:
            log.warning("stream from %s ended: report commit failed: %r", self.conn.host_id, error)
            self.conn.close()  # nothing of that commit is acked; the agent sends it again
            return
        self._ids.extend(ids)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Queue one ``Ack`` with every id made durable since the last one."""
        self._flush_scheduled = False
        if self._ids:
            ids, self._ids = self._ids, []
            self.conn.send(fleet_pb2.ControlMessage(ack=fleet_pb2.Ack(report_ids=ids)))

    def ack_empty(self) -> None:
        """An empty batch (agents send one right after Hello) is acked at once: nothing to
        store, and the ack tells the agent its stream is registered."""
        self.conn.send(fleet_pb2.ControlMessage(ack=fleet_pb2.Ack()))

    async def room(self) -> None:
        """Return when fewer than ``limit`` batches wait for a commit."""
        if not self._room.is_set():
            await self._room.wait()

    async def drained(self) -> None:
        """Return when no batch waits for a commit, its ack queued (or the stream closed)."""
        if not self._idle.is_set():
            await self._idle.wait()
        self.flush()
