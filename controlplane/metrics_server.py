"""The control plane's HTTP endpoint: ``/metrics`` for Prometheus and ``/healthz`` for probes.

On ``--metrics-listen HOST:PORT`` (off by default), separate from the gRPC port: metrics name
rollouts and agent versions, so who may read them is the operator's choice, and a scraper needs
no gRPC. The agent's threaded ``http.server`` (``agent.metrics_server.MetricsServer``): a
scrape never runs on the event loop that serves the fleet; it hands the loop one short coroutine
that reads the live state and waits for it.

- ``/metrics``: the text exposition format, or OpenMetrics when the scraper asks for it.
- ``/healthz``: 200 while the event loop answers within :data:`HEALTH_TIMEOUT` and every
  background task (report writer, presence flush, rollout driver, storm breaker, retention)
  still runs; 503 with the reason otherwise. A process whose report writer died still answers
  gRPC health checks, yet acks no report: this is the probe that sees it.

A port that cannot be bound is logged and the control plane runs on without the endpoint (the
agent's rule too): agents and rollouts matter more than their dashboard, and the scrape target's
``up == 0`` alert makes the problem visible.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.process_collector import ProcessCollector

from agent.metrics_server import MetricsServer
from controlplane.metrics import (
    SNAPSHOT_TIMEOUT,
    ControlPlaneMetrics,
    PlaneSnapshot,
    StateCollector,
    snapshot_plane,
)

if TYPE_CHECKING:
    from controlplane.plane import ControlPlane

log = logging.getLogger("stanch.cp.metrics")
T = TypeVar("T")
HEALTH_TIMEOUT = 2.0


class ServedMetrics(ControlPlaneMetrics):
    """The counters, plus the endpoint that serves them with the live state once ``serve``
    is called; ``close`` stops it."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry | None = None) -> None:
        # This process is the control plane's own, so this process-wide switch is its call:
        # ``*_created`` series double the exposition for a reset time Prometheus infers anyway.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream (0.26)
        super().__init__(registry or CollectorRegistry(auto_describe=False))
        self.host = host
        self.port = port
        self.plane: ControlPlane | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: MetricsServer | None = None

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def serve(self, plane: ControlPlane, loop: asyncio.AbstractEventLoop) -> None:
        self.plane, self.loop = plane, loop
        ProcessCollector(registry=self.registry)
        self.registry.register(StateCollector(self.snapshot))
        try:
            self.server = MetricsServer(
                self.host, self.port, self.registry, {"/healthz": self.health}, "stanch-cp"
            )
        except OSError as exc:
            log.error(
                "metrics_unavailable",
                extra={
                    "event": "metrics_unavailable",
                    "fields": {"listen": self.listen, "error": exc.strerror or str(exc)},
                },
            )
            return
        self.server.start()
        address = f"{self.host}:{self.server.port}"
        log.info(
            "metrics_listening",
            extra={"event": "metrics_listening", "fields": {"address": address}},
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    # ---- called on the HTTP threads ------------------------------------------------------------

    def snapshot(self) -> PlaneSnapshot:
        """The live state, read on the event loop."""
        if self.plane is None or self.loop is None:
            raise RuntimeError("the control plane is not running")
        return self._on_loop(snapshot_plane(self.plane, time.monotonic()), SNAPSHOT_TIMEOUT)

    def health(self) -> tuple[bool, dict[str, Any]]:
        if self.plane is None or self.loop is None:
            return False, {"status": "starting"}
        try:
            lag, tasks = self._on_loop(_probe(self.plane, time.monotonic()), HEALTH_TIMEOUT)
        except TimeoutError:
            reason = f"the event loop did not answer within {HEALTH_TIMEOUT:g}s"
            return False, {"status": "unhealthy", "reason": reason}
        except RuntimeError as exc:  # the loop is closed: shutting down
            return False, {"status": "unhealthy", "reason": str(exc)}
        body: dict[str, Any] = {"status": "ok", "loop_lag_seconds": round(lag, 3)}
        stopped = sorted(name for name, running in tasks.items() if not running)
        if stopped:
            body["status"] = "unhealthy"
            body["reason"] = "background task(s) stopped: " + ", ".join(stopped)
        return not stopped, body

    def _on_loop(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise


async def _probe(plane: ControlPlane, scheduled: float) -> tuple[float, dict[str, bool]]:
    return max(0.0, time.monotonic() - scheduled), plane.task_states()
