"""Pure parts of escalation delivery: sink config parsing, URL redaction, payload building."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from agent.notify import SinkConfig, build_payload, build_sinks, clip, parse_sinks
from agent.policy.fields import ErrorSink
from agent.sinks import (
    SINK_TYPES,
    CommandConfig,
    CommandSink,
    LogConfig,
    LogSink,
    WebhookConfig,
    WebhookSink,
    redact_url,
)


def parse(text: str) -> tuple[dict[str, SinkConfig], list[str]]:
    sink = ErrorSink("agent.yaml")
    configs = parse_sinks(yaml.safe_load(text), "sinks", sink)
    return configs, [str(e) for e in sink.errors]


def test_registry_is_an_explicit_dict_of_every_type() -> None:
    assert set(SINK_TYPES) == {"webhook", "pagerduty", "slack", "command", "log"}
    assert all(t.name == name and t.description for name, t in SINK_TYPES.items())


def test_parses_every_type_with_defaults() -> None:
    configs, errors = parse(
        """
        oncall: {type: webhook, url_file: /etc/stanch/oncall.url, headers: {X-Team: infra}}
        page: {type: command, run: [/usr/local/bin/page, --team, infra], timeout: 3s}
        audit: {type: log, path: /var/log/stanch/escalations.jsonl}
        """
    )
    assert errors == []
    assert configs["oncall"] == SinkConfig(
        "oncall", "webhook", WebhookConfig(url_file="/etc/stanch/oncall.url",
                                          headers=(("X-Team", "infra"),), timeout=5.0),
    )  # fmt: skip
    assert configs["page"].config == CommandConfig(("/usr/local/bin/page", "--team", "infra"), 3.0)
    assert configs["audit"].config == LogConfig("/var/log/stanch/escalations.jsonl")
    sinks = build_sinks(configs)
    assert isinstance(sinks["oncall"], WebhookSink)
    assert isinstance(sinks["page"], CommandSink)
    assert isinstance(sinks["audit"], LogSink)


def test_timeouts_default_per_type() -> None:
    configs, errors = parse(
        "w: {type: webhook, url: 'http://x.example/'}\nc: {type: command, run: x}"
    )
    assert errors == []
    assert configs["w"].config.timeout == 5.0
    assert configs["c"].config == CommandConfig(("x",), 10.0)


def test_unknown_key_is_reported_with_its_full_path() -> None:
    configs, errors = parse("oncall: {type: webhook, ulr: 'https://x.example/hook'}")
    assert any(e.startswith("agent.yaml: sinks.oncall.ulr: unknown key 'ulr'") for e in errors)
    # The misspelt url also leaves the sink without any URL source.
    assert any("sinks.oncall.url: give exactly one of url, url_file" in e for e in errors)
    assert "oncall" in configs  # Parsed as far as possible; the caller fails on the errors.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: {url: 'https://x.example/'}", "sinks.a.type: required field missing"),
        (
            "a: {type: pager}",
            "sinks.a.type: must be one of command, log, pagerduty, slack, webhook; got 'pager'",
        ),
        ("a: just-a-string", "sinks.a: expected a mapping, got str"),
        ("'bad name': {type: log, path: /x}", "sinks.bad name: sink names use letters"),
        (
            "a: {type: webhook, url: 'https://x.example/', url_env: HOOK}",
            "sinks.a.url: give exactly one of url, url_file",
        ),
        ("a: {type: webhook, url: 'ftp://x.example/'}", "sinks.a.url: must be an absolute http"),
        ("a: {type: webhook, url: 'http://x:99999/'}", "sinks.a.url: is not a valid URL"),
        ("a: {type: webhook, url_file: secret.url}", "sinks.a.url_file: must be an absolute"),
        ("a: {type: webhook, url_env: 'NOT-A-NAME'}", "sinks.a.url_env: must be an environment"),
        (
            "a: {type: webhook, url: 'https://x.example/', timeout: 10m}",
            "sinks.a.timeout: must be at most 120s",
        ),
        (
            "a: {type: webhook, url: 'https://x.example/', headers: {'X-A': \"1\\r\\nX-B: 2\"}}",
            "sinks.a.headers: header 'X-A': empty name, or a colon, line break or NUL",
        ),
        ("a: {type: command, run: []}", "sinks.a.run: must name a program"),
        ("a: {type: command, run: [bin/page]}", "sinks.a.run: the program must be an absolute"),
        ("a: {type: command}", "sinks.a.run: required field missing"),
        ("a: {type: log, path: relative.jsonl}", "sinks.a.path: must be an absolute path"),
        ("a: {type: log, path: /x, timeout: 1s}", "sinks.a.timeout: unknown key 'timeout'"),
    ],
)
def test_bad_values_are_reported_with_path_and_remedy(text: str, expected: str) -> None:
    _, errors = parse(text)
    assert any(expected in e for e in errors), errors


def test_not_a_mapping_at_the_top() -> None:
    configs, errors = parse("[a, b]")
    assert configs == {}
    assert errors == ["agent.yaml: sinks: expected a mapping, got list"]


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("https://hooks.example.com/a/b", False, "https://hooks.example.com/a/b"),
        ("https://u:pw@hooks.example.com/a?token=s3cr3t#x", False, "https://***@hooks.example.com/a?***"),
        ("http://[::1]:8080/h?k=v", False, "http://[::1]:8080/h?***"),
        ("https://hooks.slack.com/services/T0/B0/XYZ", True, "https://hooks.slack.com/***"),
        ("not a url", False, "<invalid URL>"),
        ("http://host:notaport/", False, "<invalid URL>"),
    ],
)  # fmt: skip
def test_redact_url_drops_userinfo_query_and_secret_paths(
    url: str, secret: bool, shown: str
) -> None:
    assert redact_url(url, secret) == shown


def payload(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "policy": "web-restart",
        "host": "web-1",
        "severity": "critical",
        "reason": "breaker_open",
        "message": "3 failed fixes in 1h;\nautomation paused",
        "runbook": "https://wiki.example/runbooks/web",
        "tried": [{"name": "restart", "ok": False, "stdout": "", "stderr": "failed"}],
        "observed": {"web.ok": 0.0},
        "correlation_id": "c0ffee",
        "at": 1_700_000_000.0,
        "labels": {"role": "web"},
    }
    args.update(overrides)
    return build_payload(**args)


def test_payload_has_a_one_line_summary_and_every_field() -> None:
    p = payload()
    assert p["summary"] == (
        "[stanch] web-1: web-restart — breaker_open: 3 failed fixes in 1h; automation paused"
    )
    assert p["text"].startswith(p["summary"]) and "Runbook: https://wiki.example" in p["text"]
    assert p["time"] == "2023-11-14T22:13:20Z"
    assert p["tried"][0]["stderr"] == "failed"
    assert p["labels"] == {"role": "web"} and p["correlation_id"] == "c0ffee"
    json.dumps(p)  # Serialisable as is.


def test_payload_bounds_step_output_and_step_count() -> None:
    big = "x" * 10_000 + "THE-ERROR"
    steps = [{"name": f"s{i}", "stdout": big, "stderr": "é" * 5000} for i in range(25)]
    p = payload(tried=steps, observed={"nested": {"blob": big}})
    assert len(p["tried"]) == 20 and p["tried_omitted"] == 5
    for step in p["tried"]:
        assert len(step["stdout"].encode()) <= 4096
        assert step["stdout"].endswith("THE-ERROR")  # The tail, where errors are, is kept.
        assert "bytes truncated" in step["stdout"]
        assert len(step["stderr"].encode()) <= 4096
    assert len(p["observed"]["nested"]["blob"].encode()) <= 4096


def test_clip_keeps_short_text_and_multibyte_boundaries() -> None:
    assert clip("short") == "short"
    clipped = clip("€" * 3000, 100)
    assert len(clipped.encode()) <= 100
    clipped.encode("utf-8")  # No broken characters.
