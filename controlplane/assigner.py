"""Issue signed assignments and deliver them to whichever hosts are connected.

Storage allocates each host's next sequence number, signs and stores in one transaction; only
then is the envelope queued to the host's stream. A host that is offline gets it on its next
Hello (the Fleet service sends the stored assignment when its sequence is above the agent's), so
delivery needs no retry loop here: the stored row *is* the desired state.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.clock import Clock
from controlplane.connections import Connections
from controlplane.instrumentation import Instruments, NoMetrics
from controlplane.storage.base import AssignmentRecord, AssignmentRequest, Signer
from controlplane.storage.runner import StorageThread


class Assigner:
    def __init__(
        self,
        store: StorageThread,
        connections: Connections,
        signer: Signer,
        clock: Clock,
        metrics: Instruments | None = None,
    ) -> None:
        self.store = store
        self.connections = connections
        self.signer = signer
        self.clock = clock
        self.metrics = metrics or NoMetrics()

    async def issue(
        self, requests: Sequence[AssignmentRequest], kind: str = "rollout"
    ) -> list[AssignmentRecord]:
        """``kind`` (rollout, rollback, join) only labels the metric."""
        if not requests:
            return []
        records = await self.store.run(
            self.store.storage.issue_assignments, requests, self.clock.now(), self.signer
        )
        self.metrics.assignments_issued(kind, len(records))
        for record in records:
            conn = self.connections.get(record.host_id)
            if conn is not None:
                conn.send_assignment(record)  # once per stream, whoever else finds it
        return records
