"""What the runner sees of metrics: the config, a few ``observe_*`` calls, and live snapshots.

This module is deliberately light. ``prometheus_client`` and the HTTP server live in
``agent.metrics`` and ``agent.metrics_server``, imported by ``open_metrics`` only when metrics
are enabled, so an agent with metrics off never pays for them (``tests/unit/test_layering.py``
holds that line).

Two kinds of numbers, two paths:

- **Events** (a check ran, a decision was made, a remediation finished, a notification was sent)
  are counted as they happen: the runner calls ``Instruments.observe_*``. With metrics off that is
  ``NoMetrics``, whose methods do nothing, so the runner never needs an ``if``.
- **State** (breakers, pauses, firing policies, the active bundle, the fleet channel) is read at
  scrape time through ``snapshot_agent``, so a gauge can never drift from the journal it mirrors.
  It runs on the HTTP server's thread and only reads: the agent's dicts are copied first, and the
  journal is thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agent.pauses import GLOBAL, Pause
from agent.policy.fields import Fields

if TYPE_CHECKING:
    from agent.checks.base import CheckResult
    from agent.runner import Agent

DEFAULT_LISTEN = "127.0.0.1:9464"
"""9464 is the port the OpenTelemetry Prometheus exporter uses; free on most hosts. Loopback by
default: metrics name every policy on the host, so exposing them is the operator's choice."""


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics:`` in the agent config. Off by default: a second agent on the same host (tests,
    demos, a canary binary) must not fail on a port the first one holds."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_metrics(f: Fields) -> MetricsConfig:
    """``{enabled: true, listen: "127.0.0.1:9464"}``; errors go to ``f``'s sink with their path."""
    enabled = f.boolean("enabled", False)
    listen = f.string("listen", DEFAULT_LISTEN)
    f.done()
    host, port = split_listen(listen) if isinstance(listen, str) else (None, None)
    if host is None or port is None:
        f.error("listen", f"expected HOST:PORT such as {DEFAULT_LISTEN} or [::1]:9464")
        return MetricsConfig(bool(enabled))
    return MetricsConfig(bool(enabled), host, port)


def split_listen(text: str) -> tuple[str | None, int | None]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None, None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None, None  # A bare IPv6 address is ambiguous: write [::1]:9464.
    return host, int(port)


# ---- events ----------------------------------------------------------------------------------


class Instruments(Protocol):
    """The calls the runner makes. ``agent.metrics.AgentMetrics`` implements them."""

    def observe_check(self, policy: str, check: str, result: CheckResult) -> None: ...

    def observe_decision(self, policy: str, outcome: str, reason: str) -> None: ...

    def observe_remediation(self, policy: str, status: str, seconds: float | None) -> None: ...

    def observe_notification(self, sink: str, result: str) -> None: ...

    def close(self) -> None: ...


class NoMetrics:
    """Metrics off: every call is free."""

    def observe_check(self, policy: str, check: str, result: CheckResult) -> None:
        pass

    def observe_decision(self, policy: str, outcome: str, reason: str) -> None:
        pass

    def observe_remediation(self, policy: str, status: str, seconds: float | None) -> None:
        pass

    def observe_notification(self, sink: str, result: str) -> None:
        pass

    def close(self) -> None:
        pass


class LoopHealth(Protocol):
    """What ``/healthz`` asks; ``agent.sdnotify.Watchdog`` answers."""

    stale_after: float

    def age(self) -> float | None: ...

    def healthy(self) -> bool: ...


def open_metrics(
    config: MetricsConfig,
    snapshot: Callable[[], AgentSnapshot],
    health: LoopHealth,
) -> Instruments:
    """``NoMetrics`` when disabled; otherwise the Prometheus instruments with their HTTP server
    already listening (``/metrics``, ``/healthz``, ``/readyz``)."""
    if not config.enabled:
        return NoMetrics()
    from agent.metrics_server import serve_metrics

    return serve_metrics(config, snapshot, health)


# ---- state, read at scrape time --------------------------------------------------------------


@dataclass(frozen=True)
class PolicySnapshot:
    name: str
    mode: str
    firing: bool
    running: bool
    paused: bool
    breaker_failures: int
    breaker_open: bool


@dataclass(frozen=True)
class BundleSnapshot:
    name: str
    digest: str
    version: int
    created: float
    expires: float
    activated_at: float
    stale: bool


@dataclass(frozen=True)
class ChannelSnapshot:
    """The control-plane channel, as the fleet client reports it."""

    connected: bool
    outbox_depth: int
    outbox_dropped: int
    """Reports lost to the outbox bound since the outbox was created (a counter)."""
    last_connected_at: float | None = None


@dataclass(frozen=True)
class AgentSnapshot:
    host: str
    policies: tuple[PolicySnapshot, ...] = ()
    paused_all: bool = False
    storm: bool = False
    load_errors: int = 0
    bundle: BundleSnapshot | None = None
    notifications: Mapping[str, int] | None = None
    """Queued notifications by status (pending, failed), when the journal can count them."""
    channel: ChannelSnapshot | None = None
    """None: no control plane configured (the agent runs standalone)."""


def snapshot_agent(
    agent: Agent,
    channel: Callable[[], ChannelSnapshot | None] | None = None,
    notifications: Callable[[], Mapping[str, int]] | None = None,
) -> AgentSnapshot:
    """Read the live agent. Called on the metrics thread: copies before iterating, reads the
    journal (locked) and the pause file, never writes."""
    now = agent.clock.now()
    live = list(agent.policies.items())
    pauses = agent.pauses.load()  # One read of the pause file per scrape, not one per policy.
    paused_all = _active(pauses.get(GLOBAL), now)
    policies = []
    for name, lp in live:
        failures, opened = agent.journal.breaker(name)
        policies.append(
            PolicySnapshot(
                name=name,
                mode=lp.policy.mode.value,
                firing=lp.firing,
                running=lp.running is not None,
                paused=paused_all or _active(pauses.get(name), now),
                breaker_failures=failures,
                breaker_open=opened is not None,
            )
        )
    return AgentSnapshot(
        host=agent.config.host_id,
        policies=tuple(policies),
        paused_all=paused_all,
        storm=agent.storm,
        load_errors=len(agent.load_errors),
        bundle=read_bundle(agent) if agent.config.policy_source == "bundle" else None,
        notifications=notifications() if notifications else None,
        channel=channel() if channel else None,
    )


def _active(pause: Pause | None, now: float) -> bool:
    return pause is not None and pause.active(now)


def read_bundle(agent: Agent) -> BundleSnapshot | None:
    from agent.bundle.pointer import ActivePointer

    pointer = ActivePointer.read(agent.config.state_dir / "bundles")
    if pointer is None:
        return None
    return BundleSnapshot(
        name=pointer.name,
        digest=pointer.digest,
        version=pointer.version,
        created=pointer.created,
        expires=pointer.expires,
        activated_at=pointer.activated_at,
        stale=pointer.expires <= time.time(),
    )
