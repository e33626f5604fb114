"""The central kill switch: ``opsctl pause --policy P | --selector k=v --for 1h``.

A pause is stored first (so it survives a control-plane restart and reaches hosts that connect
later: every Hello is answered with the pauses that apply to it), then sent as ``FleetPause`` to
every matching connected agent at once; a connected fleet stops within one message round trip.
``until`` is absolute wall-clock time, so an agent that loses the control plane still lifts the
pause on time. The fleet storm breaker trips through here as well, as operator "storm-breaker";
each trip is on the audit log as the control plane's own ``fleet.pause`` with the counts and the
limits that tripped it (an operator's pause is audited as their call).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from agent.clock import Clock
from controlplane.audit import AuditLog
from controlplane.audit_system import record_automatic
from controlplane.connections import Connection, Connections
from controlplane.selectors import matches
from controlplane.storage.base import PauseRecord
from controlplane.storage.runner import StorageThread
from controlplane.storm import StormBreaker, Trip
from stanch.v1 import fleet_pb2

log = logging.getLogger("stanch.cp.killswitch")
ALL = "*"


def pause_message(pause: PauseRecord) -> fleet_pb2.ControlMessage:
    return fleet_pb2.ControlMessage(
        pause=fleet_pb2.FleetPause(
            scope=pause.scope, until=pause.until, reason=pause.reason, by=pause.by
        )
    )


class KillSwitch:
    def __init__(
        self,
        store: StorageThread,
        connections: Connections,
        clock: Clock,
        storm: StormBreaker | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.store = store
        self.db = store.storage
        self.connections = connections
        self.clock = clock
        self.storm = storm
        self.audit = audit or AuditLog(store, clock)

    async def pause(
        self, policy: str, selector: Mapping[str, str], for_seconds: float, reason: str, by: str
    ) -> tuple[PauseRecord, int]:
        now = self.clock.now()
        until = now + for_seconds if for_seconds > 0 else 0.0
        record = await self.store.run(
            self.db.add_pause, policy or ALL, dict(selector), until, reason, by, now
        )
        reached = self._send(self.connections.matching(selector), pause_message(record))
        log.warning(
            "pause %s on %s by %s (reached %d agents): %s",
            record.scope,
            dict(selector) or "all hosts",
            by,
            reached,
            reason,
        )
        return record, reached

    async def resume(
        self, policy: str, selector: Mapping[str, str]
    ) -> tuple[list[PauseRecord], int]:
        scope = policy or ALL
        cleared = await self.store.run(self.db.clear_pauses, scope, dict(selector))
        targets = self.connections.matching(selector)
        message = fleet_pb2.ControlMessage(resume=fleet_pb2.FleetResume(scope=scope))
        reached = self._send(targets, message)
        # An agent keeps one pause per scope: re-send any other pause that still covers it.
        remaining = [
            p for p in await self.store.run(self.db.pauses, self.clock.now()) if p.scope == scope
        ]
        for conn in targets:
            for other in remaining:
                if matches(other.selector, conn.labels):
                    conn.send(pause_message(other))
        return cleared, reached

    async def for_host(self, labels: Mapping[str, str]) -> list[fleet_pb2.ControlMessage]:
        """The pauses a (re)connecting host must hold, longest-lasting last."""
        active = await self.store.run(self.db.pauses, self.clock.now())
        mine = [p for p in active if matches(p.selector, labels)]
        mine.sort(key=lambda p: float("inf") if p.until == 0 else p.until)
        return [pause_message(p) for p in mine]

    async def check_storm(self) -> list[Trip]:
        if self.storm is None:
            return []
        now = self.clock.now()
        active = await self.store.run(self.db.pauses, now)
        paused = {p.scope for p in active if not p.selector}
        if ALL in paused:
            return []
        trips = self.storm.check(len(self.connections), now, paused)
        settings = self.storm.settings
        for trip in trips:
            record, reached = await self.pause(
                trip.policy, {}, settings.pause_for, trip.message, "storm-breaker"
            )
            await self.store.run(
                self.db.add_escalation, now, "storm-breaker", trip.policy, trip.message
            )
            log.error("%s", trip.message)
            detail = {
                "policy": trip.policy,
                "scope": record.scope,
                "hosts": trip.hosts,
                "fleet": trip.fleet,
                "fraction": settings.fraction,
                "min_hosts": settings.min_hosts,
                "window": settings.window,
                "for": settings.pause_for,
                "until": record.until,
                "reached": reached,
                "reason": trip.message,
            }
            target = f"policy={trip.policy}"
            await record_automatic(self.audit, "fleet.pause", target, "storm-breaker", detail)
        return trips

    @staticmethod
    def _send(targets: list[Connection], message: fleet_pb2.ControlMessage) -> int:
        return sum(1 for conn in targets if conn.send(message))
