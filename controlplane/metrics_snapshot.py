"""The plane read at scrape time: :class:`PlaneSnapshot` and :func:`snapshot_plane`.

Part of the control plane's metrics (``controlplane.metrics_state`` turns a snapshot into
gauges; ``controlplane.metrics`` re-exports both); imported only with ``--metrics-listen``.
The bounds that keep the gauges' cardinality fixed are applied here, as the plane is read:

- rollouts appear by id only while active (at most :data:`MAX_ACTIVE`) and for the last
  :data:`RECENT_FINISHED` finished ones; counts over every stored rollout carry only ``state``;
- agent versions are what agents say in Hello: cut to :data:`MAX_LABEL` characters and, beyond
  the :data:`MAX_VERSIONS` most common, summed under ``other``.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controlplane.rollouts import ABORTED, ACTIVE, COMPLETED, PAUSED, ROLLED_BACK, RUNNING
from controlplane.security_events import SecurityEvents
from controlplane.security_metrics import EXPIRY_REFRESH, expiring_hosts
from controlplane.storage.base import PauseRecord, RolloutRecord, Storage

if TYPE_CHECKING:
    from controlplane.plane import ControlPlane

STATES = (RUNNING, PAUSED, COMPLETED, ROLLED_BACK, ABORTED)
STORM_OPERATOR = "storm-breaker"
"""The ``by`` of pauses the fleet storm breaker sets (``controlplane.killswitch``)."""
MAX_ACTIVE = 20
RECENT_FINISHED = 5
MAX_VERSIONS = 20
MAX_LABEL = 64


@dataclass(frozen=True)
class RolloutView:
    record: RolloutRecord
    hosts: Mapping[str, int] = field(default_factory=dict)
    """Rollout hosts by status; read for active rollouts only."""


@dataclass(frozen=True)
class PlaneSnapshot:
    connected: int = 0
    versions: Mapping[str, int] = field(default_factory=dict)
    reports_pending: int = 0
    tasks: Mapping[str, bool] = field(default_factory=dict)
    loop_lag: float = 0.0
    rollouts_by_state: Mapping[str, int] = field(default_factory=dict)
    rollouts: tuple[RolloutView, ...] = ()
    pauses: Mapping[str, int] = field(default_factory=dict)
    replica: str = ""
    security: SecurityEvents | None = None
    expiring_certificates: int | None = None
    """Hosts whose newest unrevoked certificate expires within 7 days
    (``controlplane.security_metrics``)."""


@dataclass(frozen=True)
class _Stored:
    by_state: Mapping[str, int]
    rollouts: tuple[RolloutView, ...]
    pauses: tuple[PauseRecord, ...]


async def snapshot_plane(plane: ControlPlane, scheduled: float) -> PlaneSnapshot:
    """Read ``plane`` on its event loop. ``scheduled`` (``time.monotonic()``) is when the scrape
    asked: the delay before this coroutine ran is the event loop's lag."""
    lag = max(0.0, time.monotonic() - scheduled)
    versions = Tally(conn.agent_version for conn in plane.connections.all())
    connected = len(plane.connections)
    pending = plane.ingestor.pending_rows
    tasks = plane.task_states()
    events = plane.auth.events
    security = events.copy()
    stored = await plane.store.run(_read_stored, plane.db, plane.clock.now())
    if plane.clock.monotonic() >= events.expiring_checked + EXPIRY_REFRESH:
        count = await plane.store.run(expiring_hosts, plane.db, plane.clock.now())
        events.expiring, events.expiring_checked = count, plane.clock.monotonic()
    pauses = Tally("storm-breaker" if p.by == STORM_OPERATOR else "operator" for p in stored.pauses)
    return PlaneSnapshot(
        connected=connected,
        versions=bounded_versions(versions),
        reports_pending=pending,
        tasks=tasks,
        loop_lag=lag,
        rollouts_by_state=stored.by_state,
        rollouts=stored.rollouts,
        pauses={source: pauses.get(source, 0) for source in ("operator", "storm-breaker")},
        replica=plane.settings.holder,
        security=security,
        expiring_certificates=events.expiring,
    )


def _read_stored(db: Storage, now: float) -> _Stored:
    """On the storage thread: three small queries, plus the hosts of each active rollout."""
    every = db.rollouts(False)
    active = [r for r in every if r.state in ACTIVE][-MAX_ACTIVE:]
    finished = [r for r in every if r.state not in ACTIVE][-RECENT_FINISHED:]
    views = [RolloutView(r, Tally(h.status for h in db.rollout_hosts(r.id))) for r in active]
    views += [RolloutView(r) for r in finished]
    views.sort(key=lambda v: (v.record.created_at, v.record.id))
    by_state = Tally(r.state for r in every)
    return _Stored(
        {state: by_state.get(state, 0) for state in STATES},
        tuple(views),
        tuple(db.pauses(now)),
    )


def bounded_versions(versions: Mapping[str, int]) -> dict[str, int]:
    """The :data:`MAX_VERSIONS` most common versions by name, the rest summed as ``other``."""
    cut: Tally[str] = Tally()
    for version, count in versions.items():
        cut[(version or "unknown")[:MAX_LABEL]] += count
    ranked = cut.most_common()
    kept = dict(ranked[:MAX_VERSIONS])
    rest = sum(count for _, count in ranked[MAX_VERSIONS:])
    if rest:
        kept["other"] = kept.get("other", 0) + rest
    return kept
