"""PagerDuty and Slack: config parsing with paths, and the exact shapes built from a payload."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from agent.notify import SinkConfig, build_payload, build_sinks, parse_sinks, resolve_payload
from agent.policy.fields import ErrorSink
from agent.sinks import PagerDutySink, SecretRef, SlackSink, WebhookConfig, sends_resolved
from agent.sinks.pagerduty import EVENTS_URL, PagerDutyConfig, dedup_key, event
from agent.sinks.slack import SlackConfig, escape, message

TRIGGER = build_payload(
    policy="nginx-down",
    host="web-17",
    severity="critical",
    reason="breaker_open",
    message="circuit breaker opened after 3 remediations that did not fix the problem",
    runbook="https://runbooks.example.com/nginx/down",
    tried=[
        {"name": "restart", "argv": ["systemctl", "restart", "nginx"], "ok": False,
         "exit_code": 1, "error": None, "stderr": "Job for nginx.service failed"},
        {"name": "note", "ok": True, "exit_code": 0},
    ],
    observed={"nginx.count": 0},
    correlation_id="c0ffee",
    at=1_700_000_000.0,
    labels={"role": "web", "env": "prod"},
)  # fmt: skip
RESOLVED = resolve_payload(
    policy="nginx-down",
    host="web-17",
    message="condition no longer holds",
    runbook="https://runbooks.example.com/nginx/down",
    correlation_id="c0ffee",
    at=1_700_000_600.0,
    labels={"role": "web"},
)


def parse(text: str) -> tuple[dict[str, SinkConfig], list[str]]:
    sink = ErrorSink("agent.yaml")
    configs = parse_sinks(yaml.safe_load(text), "sinks", sink)
    return configs, [str(e) for e in sink.errors]


def test_parses_pagerduty_and_slack_with_defaults() -> None:
    configs, errors = parse(
        """
        pager: {type: pagerduty, routing_key_file: /etc/stanch/secrets/pd}
        eu: {type: pagerduty, routing_key_env: PD_KEY, url: 'https://events.eu.pagerduty.com/v2/enqueue',
             send_resolved: false, timeout: 3s}
        chat: {type: slack, url_env: SLACK_HOOK}
        """
    )  # fmt: skip
    assert errors == []
    assert configs["pager"].config == PagerDutyConfig(SecretRef(file="/etc/stanch/secrets/pd"))
    assert configs["pager"].config.url == EVENTS_URL
    assert configs["eu"].config == PagerDutyConfig(
        SecretRef(env="PD_KEY"), "https://events.eu.pagerduty.com/v2/enqueue", 3.0, False
    )
    assert configs["chat"].config == SlackConfig(SecretRef(env="SLACK_HOOK"))
    sinks = build_sinks(configs)
    assert isinstance(sinks["pager"], PagerDutySink) and isinstance(sinks["chat"], SlackSink)
    assert sends_resolved(sinks["pager"]) and not sends_resolved(sinks["eu"])
    assert sends_resolved(sinks["chat"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: {type: pagerduty, routing_key: R0UTING}",
            "agent.yaml: sinks.a.routing_key: is a secret: give routing_key_file",
        ),
        (
            "a: {type: pagerduty}",
            "agent.yaml: sinks.a.routing_key: give exactly one of routing_key_file",
        ),
        (
            "a: {type: pagerduty, routing_key_file: /a, routing_key_env: B}",
            "got routing_key_file, routing_key_env",
        ),
        ("a: {type: pagerduty, routing_key_file: rel/key}", "sinks.a.routing_key_file: must be an"),
        ("a: {type: pagerduty, routing_key_env: PD_KEY, url: 'ftp://x'}", "sinks.a.url: must be"),
        (
            "a: {type: slack, url: 'https://hooks.slack.com/services/T/B/X'}",
            "sinks.a.url: is a secret: give url_file (a file holding it) or url_env instead",
        ),
        ("a: {type: slack, url_env: 'not a name'}", "sinks.a.url_env: must be an environment"),
        ("a: {type: slack, url_env: H, channel: ops}", "sinks.a.channel: unknown key 'channel'"),
    ],
)
def test_bad_values_are_reported_with_their_path(text: str, expected: str) -> None:
    _, errors = parse(text)
    assert any(expected in e for e in errors), errors
    assert all("R0UTING" not in e for e in errors)  # Not even the refused inline secret.


def test_webhooks_opt_in_to_resolves() -> None:
    configs, errors = parse("w: {type: webhook, url: 'https://x.example/h', send_resolved: true}")
    assert errors == []
    assert configs["w"].config == WebhookConfig(url="https://x.example/h", send_resolved=True)
    assert not sends_resolved(build_sinks(parse("w: {type: webhook, url: 'http://x/'}")[0])["w"])


def test_pagerduty_trigger_event() -> None:
    body = event(TRIGGER, "R0UTING-KEY")
    assert body == {
        "routing_key": "R0UTING-KEY",
        "event_action": "trigger",
        "dedup_key": "stanch/web-17/nginx-down",
        "payload": {
            "summary": "[stanch] web-17: nginx-down — breaker_open: circuit breaker opened "
            "after 3 remediations that did not fix the problem",
            "source": "web-17",
            "severity": "critical",
            "timestamp": "2023-11-14T22:13:20Z",
            "component": "nginx-down",
            "class": "breaker_open",
            "group": "web",
            "custom_details": {
                "reason": "breaker_open",
                "message": TRIGGER["message"],
                "tried": TRIGGER["tried"],
                "observed": {"nginx.count": 0},
                "correlation_id": "c0ffee",
                "labels": {"role": "web", "env": "prod"},
                "runbook": "https://runbooks.example.com/nginx/down",
            },
        },
        "client": "Stanch",
        "client_url": "https://runbooks.example.com/nginx/down",
        "links": [{"href": "https://runbooks.example.com/nginx/down", "text": "Runbook"}],
    }


def test_pagerduty_resolve_event_closes_the_same_incident() -> None:
    assert event(RESOLVED, "K") == {
        "routing_key": "K",
        "event_action": "resolve",
        "dedup_key": "stanch/web-17/nginx-down",
    }
    assert dedup_key("web-17", "*") == "stanch/web-17/*"  # The host-wide storm page.
    assert len(dedup_key("h" * 300, "p")) == 255


@pytest.mark.parametrize(("severity", "expected"), [("info", "info"), ("bogus", "error")])
def test_pagerduty_severity(severity: str, expected: str) -> None:
    assert event({**TRIGGER, "severity": severity}, "K")["payload"]["severity"] == expected


def test_no_runbook_means_no_links() -> None:
    body = event({**TRIGGER, "runbook": ""}, "K")
    assert "links" not in body and "client_url" not in body
    assert "runbook" in body["payload"]["custom_details"]


def test_slack_trigger_message() -> None:
    msg = message(TRIGGER)
    assert msg["text"] == TRIGGER["text"]  # Notification fallback, with the runbook.
    header, section, tried, context = msg["blocks"]
    assert header == {
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": ":rotating_light: nginx-down on web-17: breaker_open",
            "emoji": True,
        },
    }
    assert section["text"]["text"] == TRIGGER["message"]
    assert [f["text"] for f in section["fields"]] == [
        "*Host*\nweb-17",
        "*Policy*\nnginx-down",
        "*Severity*\ncritical",
        "*Reason*\nbreaker_open",
    ]
    assert tried["text"]["text"] == "*Tried*\n• `restart`: exit 1\n• `note`: ok"
    assert context == {
        "type": "context",
        "elements": [
            {
                "type": "mrkdwn",
                "text": "<https://runbooks.example.com/nginx/down|Runbook> · "
                "correlation id `c0ffee`",
            }
        ],
    }


def test_slack_resolve_message() -> None:
    assert message(RESOLVED) == {
        "text": "Resolved: nginx-down on web-17",
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": ":white_check_mark: *Resolved*: `nginx-down` on `web-17`\n"
                    "condition no longer holds",
                },
            }
        ],
    }


def test_slack_escapes_and_bounds_user_text() -> None:
    hostile: dict[str, Any] = {
        **TRIGGER,
        "message": "<!channel> & <https://evil.example|click>" + "x" * 5000,
        "policy": "p" * 200,
        "tried": [{"name": f"s{i}", "ok": True} for i in range(15)],
    }
    msg = message(hostile)
    header, section, tried, _ = msg["blocks"]
    assert len(header["text"]["text"]) <= 150
    assert section["text"]["text"].startswith("&lt;!channel&gt; &amp; &lt;https://evil.example|")
    assert len(section["text"]["text"]) <= 3000
    assert all(len(f["text"]) <= 2000 for f in section["fields"])
    assert tried["text"]["text"].endswith("… and 5 more")
    assert escape("a<b>&c") == "a&lt;b&gt;&amp;c"
