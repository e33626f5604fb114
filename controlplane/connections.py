"""Who is connected right now, and the one outbound queue per agent stream.

Each ``Fleet.Connect`` stream registers a :class:`Connection`; anything that must reach an agent
(an assignment, an ack, a pause) is put on its queue and the stream's writer sends it in order.
Queues are per connection, so a slow agent never delays another. A host that connects again
(a reconnect racing the old stream's teardown, or two agents misconfigured with one host id)
replaces the older stream, which is told to close: one host, one stream.

Each stream remembers the serial of the client certificate it was opened with (empty in
``--insecure`` mode, or when the opener did not say), so revoking that one certificate cuts the
stream at once (:meth:`Connections.cut_certificate`), as revoking the whole host does. Those
cut on the replica that served the revocation; every other replica's revocation sweep
(``controlplane.revocation_sweep``) closes its own streams of the host or serial within seconds.

Each stream also remembers the highest assignment sequence it carried (or the agent said in its
Hello that it holds). Several senders may find the same assignment: the assigner right after
issuing it, and every replica's delivery pass that reads it back from storage. Each sequence goes
out at most once per stream; only an explicit retry (the agent did not consume it) repeats one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from controlplane.selectors import matches
from controlplane.storage.base import AssignmentRecord
from stanch.v1 import fleet_pb2

MAX_QUEUED = 10_000
"""An agent this far behind is not reading; its stream is closed and it reconnects."""


@dataclass(eq=False)
class Connection:
    host_id: str
    labels: Mapping[str, str]
    peer: str = ""
    agent_version: str = ""
    queue: asyncio.Queue[fleet_pb2.ControlMessage | None] = field(
        default_factory=lambda: asyncio.Queue(MAX_QUEUED)
    )
    closed: bool = False
    sent_seq: int = 0
    """The highest assignment sequence sent on this stream, or held by the agent (Hello)."""
    serial: str = ""
    """The serial (lower-case hex) of the certificate the stream was opened with; "" unknown."""

    def send_assignment(self, record: AssignmentRecord, *, again: bool = False) -> bool:
        """Queue ``record`` unless this stream already carried its sequence or a higher one;
        ``again`` repeats one the agent reported it did not consume (a retryable failure).
        True when queued."""
        if record.seq <= self.sent_seq and not again:
            return False
        message = fleet_pb2.ControlMessage(
            assignment=fleet_pb2.SignedAssignment(envelope=record.envelope)
        )
        if not self.send(message):
            return False
        self.sent_seq = max(self.sent_seq, record.seq)
        return True

    def send(self, message: fleet_pb2.ControlMessage) -> bool:
        """Queue ``message``; False when the stream is closed or hopelessly behind."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.close()
            return False
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # Make room for the sentinel: the writer stops at it whatever is queued before.
            while self.queue.full():
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class Connections:
    def __init__(self) -> None:
        self._by_host: dict[str, Connection] = {}

    def open(
        self,
        host_id: str,
        labels: Mapping[str, str],
        peer: str = "",
        agent_version: str = "",
        held_seq: int = 0,
        serial: str = "",
    ) -> Connection:
        """Register a new stream; ``held_seq`` is the highest assignment sequence the agent
        accepted (its Hello): nothing at or below it is sent. ``serial``: the verified client
        certificate's (``identity.peer_serial``)."""
        old = self._by_host.get(host_id)
        if old is not None:
            old.close()
        conn = Connection(
            host_id, dict(labels), peer, agent_version, sent_seq=held_seq, serial=serial
        )
        self._by_host[host_id] = conn
        return conn

    def release(self, conn: Connection) -> bool:
        """Forget ``conn``; False when a newer stream for the same host already replaced it."""
        conn.close()
        if self._by_host.get(conn.host_id) is conn:
            del self._by_host[conn.host_id]
            return True
        return False

    def cut_certificate(self, serial: str, host_id: str = "") -> list[str]:
        """Close every stream opened with certificate ``serial`` (just revoked), and
        ``host_id``'s stream (the host the certificate was issued to) when its serial is
        unknown: cut to be safe; if it ran on another, valid certificate, the agent reconnects.
        The hosts whose stream was closed."""
        cut = [
            conn
            for conn in self._by_host.values()
            if not conn.closed
            and (conn.serial == serial or (conn.host_id == host_id and not conn.serial))
        ]
        for conn in cut:
            conn.close()
        return [conn.host_id for conn in cut]

    def get(self, host_id: str) -> Connection | None:
        return self._by_host.get(host_id)

    def matching(self, selector: Mapping[str, str]) -> list[Connection]:
        return [c for c in self._by_host.values() if matches(selector, c.labels)]

    def all(self) -> list[Connection]:
        return list(self._by_host.values())

    def hosts(self) -> list[str]:
        return sorted(self._by_host)

    def __len__(self) -> int:
        return len(self._by_host)

    def close_all(self) -> None:
        for conn in list(self._by_host.values()):
            conn.close()
        self._by_host.clear()
