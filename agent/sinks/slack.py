"""``slack``: a Slack incoming webhook message with a plain-text fallback and Block Kit blocks.

::

    sinks:
      chat:
        type: slack
        url_file: /etc/stanch/secrets/slack-webhook   # or url_env; the URL carries the token

The message says what a person needs in the channel at a glance: host, policy, reason, the
message, what was tried and how each step ended, and the runbook as a link. ``text`` is the
notification and screen-reader fallback Slack requires next to ``blocks``. A resolve posts a short
"resolved" follow-up (``send_resolved: false`` turns that off).

Slack's limits are applied here, not left to a 400 at 3 AM: 150 characters in a header, 3000 in a
section, 2000 in a field. User text is escaped (``&``, ``<``, ``>``) so a process name cannot
become a mention or a link. https://api.slack.com/messaging/webhooks
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.policy.fields import Fields
from agent.sinks.base import SinkType, bounded_timeout, is_resolve
from agent.sinks.transport import SecretRef, parse_secret, post_json, read_secret

HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
MAX_STEPS = 10
ICONS = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


@dataclass(frozen=True)
class SlackConfig:
    url: SecretRef
    timeout: float = 5.0
    send_resolved: bool = True


def parse_slack(f: Fields) -> SlackConfig:
    url = parse_secret(f, "url", inline=False, example="STANCH_SLACK_WEBHOOK")
    timeout = bounded_timeout(f, 5.0)
    return SlackConfig(url, timeout, bool(f.boolean("send_resolved", True)))


def escape(text: str) -> str:
    """Slack mrkdwn control characters; everything else is shown as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def message(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The incoming-webhook body for one Stanch payload."""
    host = str(payload.get("host", ""))
    policy = str(payload.get("policy", ""))
    runbook = str(payload.get("runbook", ""))
    link = f"<{runbook}|Runbook>" if runbook.startswith(("http://", "https://")) else ""
    if is_resolve(payload):
        text = f"Resolved: {policy} on {host}"
        line = f":white_check_mark: *Resolved*: `{escape(policy)}` on `{escape(host)}`"
        detail = escape(str(payload.get("message", "")))
        body = f"{line}\n{detail}" if detail else line
        return {
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": _cut(body, SECTION_LIMIT)}}
            ],
        }
    severity = str(payload.get("severity", "critical"))
    reason = str(payload.get("reason", ""))
    title = f"{policy} on {host}: {reason}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _cut(f"{ICONS.get(severity, '')} {title}".strip(), HEADER_LIMIT),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _cut(escape(str(payload.get("message", ""))) or reason, SECTION_LIMIT),
            },
            "fields": [
                _field("Host", host),
                _field("Policy", policy),
                _field("Severity", severity),
                _field("Reason", reason),
            ],
        },
    ]
    tried = [s for s in payload.get("tried") or [] if isinstance(s, Mapping)]
    if tried:
        lines = [_step_line(step) for step in tried[:MAX_STEPS]]
        if len(tried) > MAX_STEPS:
            lines.append(f"… and {len(tried) - MAX_STEPS} more")
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _cut("*Tried*\n" + "\n".join(lines), SECTION_LIMIT),
                },
            }
        )
    context = [f"correlation id `{escape(str(payload.get('correlation_id') or '-'))}`"]
    if link:
        context.insert(0, link)
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]}
    )
    summary = str(payload.get("summary", title))
    text = f"{summary}\nRunbook: {runbook}" if runbook else summary
    return {"text": _cut(text, SECTION_LIMIT), "blocks": blocks}


def _field(name: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _cut(f"*{name}*\n{escape(value)}", FIELD_LIMIT)}


def _step_line(step: Mapping[str, Any]) -> str:
    name = escape(str(step.get("name", "step")))
    if step.get("ok"):
        outcome = "ok"
    elif step.get("error"):
        outcome = escape(str(step["error"]))
    elif step.get("exit_code") is not None:
        outcome = f"exit {step['exit_code']}"
    else:
        outcome = "failed"
    return f"• `{name}`: {_cut(outcome, 200)}"


class SlackSink:
    def __init__(self, config: SlackConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._environ = os.environ if environ is None else environ

    def send(self, payload: Mapping[str, Any]) -> None:
        c = self.config
        url, secret = read_secret(c.url, "url", self._environ)
        post_json(
            url, message(payload), c.timeout, secret=secret, where=c.url.where, what="Slack webhook"
        )


SLACK = SinkType(
    "slack",
    parse_slack,
    SlackSink,
    "Slack incoming webhook: a readable message with what was tried and the runbook link.",
)
