"""``pagerduty``: PagerDuty Events API v2, trigger and resolve.

::

    sinks:
      pager:
        type: pagerduty
        routing_key_file: /etc/stanch/secrets/pagerduty-routing-key   # or routing_key_env
        # url: https://events.eu.pagerduty.com/v2/enqueue            # EU service region

One incident per host and policy. Every escalation for the same problem carries
``dedup_key = stanch/<host>/<policy>``, so a breaker opening after a failed fix adds to the page
that is already open instead of opening a second one, and the ``resolve`` sent when the problem
is fixed (by the agent or by a human) closes it. The routing key is an integration secret: it is
read from a file or the environment only, never from config, and scrubbed from every error.

PagerDuty answers 202 to an accepted event, 400 to a malformed one (permanent: it is recorded as
``failed``) and 429 when throttled (retried with backoff). See
https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ for the fields.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.policy.fields import Fields
from agent.sinks.base import SinkType, bounded_timeout, is_resolve
from agent.sinks.transport import SecretRef, parse_secret, post_json, read_secret, url_problem

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SUMMARY_LIMIT = 1024
SEVERITIES = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}
"""Stanch severities are a subset of PagerDuty's; anything unexpected pages as ``error``."""


@dataclass(frozen=True)
class PagerDutyConfig:
    routing_key: SecretRef
    url: str = EVENTS_URL
    timeout: float = 10.0
    send_resolved: bool = True


def parse_pagerduty(f: Fields) -> PagerDutyConfig:
    key = parse_secret(f, "routing_key", inline=False, example="PAGERDUTY_ROUTING_KEY")
    url = f.string("url", EVENTS_URL)
    if isinstance(url, str):
        from urllib.parse import urlsplit

        try:
            problem = url_problem(urlsplit(url))
        except ValueError:
            problem = "is not a valid URL (check the port)"
        if problem:
            f.error("url", f"{problem}; the default is {EVENTS_URL}")
    timeout = bounded_timeout(f, 10.0)
    resolved = f.boolean("send_resolved", True)
    return PagerDutyConfig(key, url if isinstance(url, str) else EVENTS_URL, timeout, resolved)


def dedup_key(host: str, policy: str) -> str:
    """One incident per host and policy (``*`` is the host-wide storm)."""
    return f"stanch/{host}/{policy}"[:255]


def event(payload: Mapping[str, Any], routing_key: str) -> dict[str, Any]:
    """The Events API v2 body for one Stanch payload (``build_payload``/``resolve_payload``)."""
    host = str(payload.get("host", ""))
    policy = str(payload.get("policy", ""))
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "dedup_key": dedup_key(host, policy),
    }
    if is_resolve(payload):
        body["event_action"] = "resolve"
        return body
    runbook = str(payload.get("runbook", ""))
    reason = str(payload.get("reason", ""))
    body["event_action"] = "trigger"
    body["payload"] = {
        "summary": str(payload.get("summary", f"{host}: {policy} {reason}"))[:SUMMARY_LIMIT],
        "source": host,
        "severity": SEVERITIES.get(str(payload.get("severity", "")), "error"),
        "timestamp": payload.get("time"),
        "component": policy,
        "class": reason,
        "group": str(dict(payload.get("labels") or {}).get("role", "")) or None,
        "custom_details": {
            "reason": reason,
            "message": payload.get("message", ""),
            "tried": payload.get("tried", []),
            "observed": payload.get("observed", {}),
            "correlation_id": payload.get("correlation_id", ""),
            "labels": payload.get("labels", {}),
            "runbook": runbook,
        },
    }
    body["payload"] = {k: v for k, v in body["payload"].items() if v not in (None, "")}
    body["client"] = "Stanch"
    if runbook.startswith(("http://", "https://")):
        body["links"] = [{"href": runbook, "text": "Runbook"}]
        body["client_url"] = runbook
    return body


class PagerDutySink:
    def __init__(self, config: PagerDutyConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._environ = os.environ if environ is None else environ

    def send(self, payload: Mapping[str, Any]) -> None:
        c = self.config
        key, _ = read_secret(c.routing_key, "routing_key", self._environ)
        post_json(
            c.url,
            event(payload, key),
            c.timeout,
            where="url",
            what="PagerDuty events",
            secrets=(key,),
        )


PAGERDUTY = SinkType(
    "pagerduty",
    parse_pagerduty,
    PagerDutySink,
    "PagerDuty Events API v2: trigger, and resolve when fixed (dedup_key per host+policy).",
)
