"""What the control plane's parts see of metrics: a few ``observe`` calls, and nothing else.

Like ``agent.instrumentation``, this module is deliberately light. ``prometheus_client`` and the
HTTP endpoint live in ``controlplane.metrics`` and ``controlplane.metrics_server``, imported only
when ``--metrics-listen`` is given; without it every part holds :class:`NoMetrics`, whose calls
do nothing, so no hook needs an ``if``.

Two kinds of numbers, two paths:

- **Events** (a heartbeat, a report batch committed, an assignment issued, a gate that turned
  failing, a rollback, a storm trip, an RPC finished) are counted where they happen, through
  :class:`Instruments`.
- **State** (connected agents, rollouts and their waves and gates, active pauses, reports
  waiting for their commit, the background tasks) is read at scrape time from the live
  :class:`~controlplane.plane.ControlPlane`, so a gauge never drifts from what it mirrors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncio

    import grpc.aio

    from controlplane.gates import GateResult
    from controlplane.plane import ControlPlane
    from controlplane.storage.base import RolloutRecord

ISSUE_KINDS = ("rollout", "rollback", "join")
"""Why an assignment was issued: a rollout wave, a rollback, a host joining after a rollout
completed (the fleet's standing bundle)."""


class Instruments(Protocol):
    """The calls the control plane makes. ``controlplane.metrics.ControlPlaneMetrics``
    implements them; every call is cheap and made from the event loop."""

    def heartbeat(self) -> None: ...

    def presence_flushed(self, hosts: int, ok: bool) -> None: ...

    def reports_received(self, count: int) -> None: ...

    def reports_committed(self, rows: int, new: int | None, seconds: float) -> None:
        """One group commit: ``new`` rows stored (the rest were redeliveries), or None when
        the commit failed and nothing was acked."""
        ...

    def assignments_issued(self, kind: str, count: int) -> None: ...

    def rollout_step(self, before: RolloutRecord, results: Sequence[GateResult]) -> None:
        """A rollout was evaluated: ``before`` holds the previous gate results."""
        ...

    def rolled_back(self, state: str, hosts: int, stranded: int) -> None: ...

    def storm_tripped(self, trips: int) -> None: ...

    def interceptor(self) -> grpc.aio.ServerInterceptor | None:
        """The gRPC interceptor that times every RPC, when metrics are on."""
        ...

    def serve(self, plane: ControlPlane, loop: asyncio.AbstractEventLoop) -> None:
        """Start the HTTP endpoint, reading ``plane``'s state on ``loop`` at scrape time."""
        ...

    def close(self) -> None: ...


class NoMetrics:
    """Metrics off: every call is free."""

    def heartbeat(self) -> None:
        pass

    def presence_flushed(self, hosts: int, ok: bool) -> None:
        pass

    def reports_received(self, count: int) -> None:
        pass

    def reports_committed(self, rows: int, new: int | None, seconds: float) -> None:
        pass

    def assignments_issued(self, kind: str, count: int) -> None:
        pass

    def rollout_step(self, before: RolloutRecord, results: Sequence[GateResult]) -> None:
        pass

    def rolled_back(self, state: str, hosts: int, stranded: int) -> None:
        pass

    def storm_tripped(self, trips: int) -> None:
        pass

    def interceptor(self) -> grpc.aio.ServerInterceptor | None:
        return None

    def serve(self, plane: ControlPlane, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def close(self) -> None:
        pass


def open_metrics(listen: tuple[str, int] | None) -> Instruments:
    """``NoMetrics`` without ``--metrics-listen``; otherwise the Prometheus instruments, ready
    to count. Their endpoint starts with ``serve`` once the plane is running."""
    if listen is None:
        return NoMetrics()
    from controlplane.metrics_server import ServedMetrics

    return ServedMetrics(*listen)
