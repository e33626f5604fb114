"""The contract every sink type follows, and the one error a delivery attempt may raise.

A sink type pairs ``parse(Fields)``, which turns its YAML keys into a typed, frozen config at load
time, with ``build(config)``, which makes a ``Sink``. ``Sink.send(payload)`` makes one delivery
attempt and either returns (delivered) or raises ``DeliveryError``, whose ``retryable`` flag tells
the ``Notifier`` whether backing off and trying again can help.

Resolves. A payload whose ``event`` is ``resolve`` says that a problem the agent escalated is
fixed. Only sinks with ``send_resolved`` get one (PagerDuty closes its incident by ``dedup_key``,
Slack posts a follow-up; a generic webhook opts in, as in Alertmanager), so a plain log or paging
script never receives an event it does not expect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import StanchError
from agent.policy.fields import Fields

USER_AGENT = "stanch-agent"
ERROR_BODY_LIMIT = 512
MAX_TIMEOUT = 120.0
"""Sinks are tried one after another; a longer timeout would hold up every other sink."""
RESOLVE = "resolve"
"""``payload["event"]`` of a resolve; a trigger has ``trigger`` (or no ``event``: schema v1)."""


class DeliveryError(StanchError):
    """One delivery attempt failed. ``retryable`` is False when trying again cannot help
    (the receiver rejected the request as malformed, or the URL is not usable)."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class Sink(Protocol):
    def send(self, payload: Mapping[str, Any]) -> None:
        """Deliver once or raise DeliveryError. Must return within the sink's timeout."""
        ...


@dataclass(frozen=True)
class SinkType:
    name: str
    parse: Callable[[Fields], Any]
    build: Callable[[Any], Sink]
    description: str = ""


def is_resolve(payload: Mapping[str, Any]) -> bool:
    return payload.get("event") == RESOLVE


def sends_resolved(sink: object) -> bool:
    """True for a sink that wants resolve events (its config says ``send_resolved``)."""
    config = getattr(sink, "config", None)
    return bool(getattr(config, "send_resolved", False))


def bounded_timeout(f: Fields, default: float) -> float:
    seconds = f.duration("timeout", default, minimum=0.01)
    if isinstance(seconds, float) and seconds > MAX_TIMEOUT:
        f.error("timeout", f"must be at most {MAX_TIMEOUT:g}s; sinks are tried one at a time")
    return min(seconds, MAX_TIMEOUT) if isinstance(seconds, float) and seconds > 0 else default
