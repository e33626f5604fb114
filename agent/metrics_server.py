"""The agent's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes.

One small threaded ``http.server`` on the configured address (loopback by default), not
prometheus_client's ``start_http_server``: that one answers every path with metrics, and the
probes need their own answers from the same port.

- ``/healthz`` (liveness): 200 while the main loop turns, 503 once it has been silent for
  ``stale_after``. A Kubernetes liveness probe on it restarts a wedged agent the way systemd's
  ``WatchdogSec=`` does on a VM.
- ``/readyz`` (readiness): 200 once start-up finished (crash recovery done, policies loaded: the
  first loop turn) and the loop is healthy; 503 before. A DaemonSet rollout waits for it.
- ``/metrics``: the text exposition format, or OpenMetrics when the scraper asks for it.

A port that cannot be bound is logged and the agent runs on without the endpoint: remediation
matters more than its dashboard, and on Kubernetes the failing probes make the problem visible.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from agent.instrumentation import AgentSnapshot, LoopHealth, MetricsConfig
from agent.metrics import AgentMetrics, StateCollector

log = logging.getLogger("stanch.agent.metrics")

REQUEST_TIMEOUT = 10.0
"""A client that stops sending mid-request is dropped after this, so it cannot hold a thread."""


Probe = Callable[[], tuple[bool, dict[str, Any]]]
"""A probe answers (healthy, JSON body); the endpoint turns that into 200 or 503."""


class MetricsServer(ThreadingHTTPServer):
    """``/metrics`` from ``registry`` plus one JSON endpoint per probe, on a daemon thread.
    Shared with the control plane (``controlplane.metrics_server``), which brings its own probes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        probes: Mapping[str, Probe],
        name: str = "stanch-agent",
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.registry = registry
        self.probes = dict(probes)
        self.name = name
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def paths(self) -> list[str]:
        return ["/metrics", *self.probes]

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, args=(0.5,), name=f"{self.name}-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5.0)
            self._thread = None
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = REQUEST_TIMEOUT

    @property
    def server_version(self) -> str:  # type: ignore[override]  # a class attribute upstream
        return self.server.name

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        probe = self.server.probes.get(path)
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(self.server.registry), content_type)
        elif probe is not None:
            ok, body = probe()
            self._reply(200 if ok else 503, json.dumps(body).encode() + b"\n", "application/json")
        elif path == "/":
            body_text = f"{self.server.name}: {' '.join(self.server.paths)}\n"
            self._reply(200, body_text.encode(), "text/plain; charset=utf-8")
        else:
            paths = self.server.paths
            hint = ", ".join(paths[:-1]) + f" or {paths[-1]}"
            self._reply(404, f"not found; try {hint}\n".encode(), "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Scrapes every 15 s and probes every 10 s would drown the process's own log.


def loop_probe(health: LoopHealth, ready: bool) -> Probe:
    """The agent's probes: ``/healthz`` (alive) and ``/readyz`` (start-up done, loop healthy)."""

    def probe() -> tuple[bool, dict[str, Any]]:
        age = health.age()
        body: dict[str, Any] = {"loop_age_seconds": None if age is None else round(age, 3)}
        if age is None:
            # Still in start-up (crash recovery, first policy load): alive, not yet ready.
            body["status"] = "starting"
            return not ready, body
        if health.healthy():
            body["status"] = "ok"
            return True, body
        body["status"] = "unhealthy"
        body["reason"] = (
            f"the main loop has not turned for {age:.1f}s (limit {health.stale_after:g}s)"
        )
        return False, body

    return probe


class ServedMetrics(AgentMetrics):
    """``AgentMetrics`` with the HTTP endpoint that serves them; ``close`` stops it."""

    def __init__(self, registry: CollectorRegistry, server: MetricsServer | None) -> None:
        super().__init__(registry)
        self.server = server

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def serve_metrics(
    config: MetricsConfig,
    snapshot: Callable[[], AgentSnapshot],
    health: LoopHealth,
    registry: CollectorRegistry | None = None,
) -> ServedMetrics:
    """Build the registry (events, live state, the agent's own process figures) and start
    serving it. Pass ``registry`` to build into one you hold (tests do)."""
    # The agent owns its process, so this process-wide switch is its call: ``*_created`` series
    # double the exposition for a counter reset time that Prometheus infers anyway.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream (0.26)
    registry = registry or CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(StateCollector(snapshot, health))
    try:
        probes = {"/healthz": loop_probe(health, False), "/readyz": loop_probe(health, True)}
        server: MetricsServer | None = MetricsServer(config.host, config.port, registry, probes)
    except OSError as exc:
        log.error(
            "metrics_unavailable",
            extra={
                "event": "metrics_unavailable",
                "fields": {"listen": config.listen, "error": exc.strerror or str(exc)},
            },
        )
        server = None
    metrics = ServedMetrics(registry, server)
    if server is not None:
        server.start()
        log.info(
            "metrics_listening",
            extra={
                "event": "metrics_listening",
                "fields": {"address": f"{config.host}:{server.port}"},
            },
        )
    return metrics
