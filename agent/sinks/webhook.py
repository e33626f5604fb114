"""``webhook``: POST the escalation payload as JSON to an http(s) URL.

The generic sink: Alertmanager-style receivers, Mattermost, Teams connectors, a team's own glue.
The URL comes from ``url`` (not secret), ``url_file`` or ``url_env``; see ``transport`` for how it
is kept out of errors. With ``send_resolved: true`` the receiver also gets resolve events
(``"event": "resolve"``) when a problem it heard about is fixed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agent.policy.fields import Fields
from agent.sinks.base import SinkType, bounded_timeout
from agent.sinks.transport import SecretRef, parse_secret, post_json, read_secret, url_problem


@dataclass(frozen=True)
class WebhookConfig:
    url: str | None = None
    url_file: str | None = None
    url_env: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 5.0
    send_resolved: bool = False

    @property
    def source(self) -> SecretRef:
        return SecretRef(self.url, self.url_file, self.url_env)


def parse_webhook(f: Fields) -> WebhookConfig:
    ref = parse_secret(f, "url", inline=True, example="STANCH_WEBHOOK_URL")
    if ref.value:
        try:
            problem = url_problem(urlsplit(ref.value))
        except ValueError:
            problem = "is not a valid URL (check the port)"
        if problem:
            f.error("url", f"{problem}; e.g. https://alerts.example.com/hook")
    headers = parse_headers(f)
    timeout = bounded_timeout(f, 5.0)
    resolved = f.boolean("send_resolved", False)
    return WebhookConfig(ref.value, ref.file, ref.env, headers, timeout, bool(resolved))


def parse_headers(f: Fields) -> tuple[tuple[str, str], ...]:
    headers = f.str_map("headers")
    for name, value in headers.items():
        if not name.strip() or any(c in name + value for c in "\r\n\0") or ":" in name:
            f.error("headers", f"header {name!r}: empty name, or a colon, line break or NUL")
    return tuple(sorted(headers.items()))


class WebhookSink:
    """POSTs the payload as it is (schema ``stanch.escalation/v1``)."""

    def __init__(self, config: WebhookConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._environ = os.environ if environ is None else environ

    def send(self, payload: Mapping[str, Any]) -> None:
        c = self.config
        url, secret = read_secret(c.source, "url", self._environ)
        post_json(
            url,
            payload,
            c.timeout,
            secret=secret,
            where=c.url_file or c.url_env or "url",
            headers=c.headers,
        )


WEBHOOK = SinkType(
    "webhook",
    parse_webhook,
    WebhookSink,
    "POST the payload as JSON to an http(s) URL (url, url_file or url_env).",
)
