"""Where escalations go: the registry of sink types, an explicit dict like ``CHECK_TYPES``.

Each module holds one type: its typed config, ``parse``, the sink and its ``SinkType`` entry.
``base`` has the contract (``Sink``, ``DeliveryError``, resolves) and ``transport`` the HTTP POST
the HTTP sinks share, with the rules that keep secrets out of errors.

- ``webhook``: generic JSON POST (the payload as is).
- ``pagerduty``: Events API v2, trigger and resolve, one incident per host and policy.
- ``slack``: an incoming-webhook message with blocks.
- ``command``: a program with the payload on stdin.
- ``log``: JSON lines in a file.
"""

from __future__ import annotations

from agent.sinks.base import (
    RESOLVE,
    DeliveryError,
    Sink,
    SinkType,
    is_resolve,
    sends_resolved,
)
from agent.sinks.command import COMMAND, CommandConfig, CommandSink
from agent.sinks.logfile import LOG, LogConfig, LogSink
from agent.sinks.pagerduty import PAGERDUTY, PagerDutyConfig, PagerDutySink
from agent.sinks.slack import SLACK, SlackConfig, SlackSink
from agent.sinks.transport import SecretRef, redact_url
from agent.sinks.webhook import WEBHOOK, WebhookConfig, WebhookSink

SINK_TYPES: dict[str, SinkType] = {
    WEBHOOK.name: WEBHOOK,
    PAGERDUTY.name: PAGERDUTY,
    SLACK.name: SLACK,
    COMMAND.name: COMMAND,
    LOG.name: LOG,
}

__all__ = [
    "RESOLVE",
    "SINK_TYPES",
    "CommandConfig",
    "CommandSink",
    "DeliveryError",
    "LogConfig",
    "LogSink",
    "PagerDutyConfig",
    "PagerDutySink",
    "SecretRef",
    "Sink",
    "SinkType",
    "SlackConfig",
    "SlackSink",
    "WebhookConfig",
    "WebhookSink",
    "is_resolve",
    "redact_url",
    "sends_resolved",
]
