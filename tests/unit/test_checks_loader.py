"""A policy using each check type loads; typos and bad values fail with file and path."""

from __future__ import annotations

import pytest

from agent.policy.loader import load_text

CHECKS = {
    "cpu": ("{type: cpu}", "percent", 90),
    "load": ("{type: load}", "load1_per_cpu", 2),
    "memory": ("{type: memory}", "used_percent", 95),
    "disk": ("{type: disk, path: /var}", "used_percent", 90),
    "process": ("{type: process, name: nginx, watch: false}", "count", 1),
    "port": ("{type: port, port: 8080, connect_timeout: 1s}", "ok", 1),
    "http": (
        "{type: http, url: 'http://127.0.0.1:8080/health', expect_status: 200, "
        "headers: {Host: web.local}, request_timeout: 2s}",
        "ok",
        1,
    ),
    "systemd": ("{type: systemd, unit: nginx.service}", "active", 1),
    "command": (
        "{type: command, run: [/usr/lib/nagios/plugins/check_load, -w, '5', -c, '10'], "
        "plugin_timeout: 5s}",
        "load1",
        5,
    ),
    "prometheus": (
        "{type: prometheus, url: 'http://127.0.0.1:9100/metrics', metric: node_load1, "
        "labels: {instance: local}}",
        "value",
        4,
    ),
}


def policy(check: str, metric: str, value: float, extra_step: str = "") -> str:
    return f"""
apiVersion: stanch.dev/v1
kind: Policy
metadata:
  name: demo
spec:
  checks:
    web: {check}
  rule:
    when: {{check: web, metric: {metric}, op: ">", value: {value}}}
  remediation:
    steps:
      - name: act
        run: [/bin/true{extra_step}]
"""


@pytest.mark.parametrize("type_name", sorted(CHECKS))
def test_each_type_loads_in_a_policy(type_name: str) -> None:
    check, metric, value = CHECKS[type_name]
    policies, errors = load_text(policy(check, metric, value), "p.yaml")
    assert errors == []
    (spec,) = policies[0].checks
    assert spec.type == type_name and spec.config is not None


def test_typo_in_a_check_key_names_the_path() -> None:
    _, errors = load_text(policy("{type: process, nmae: nginx}", "count", 1), "web.yaml")
    problems = [str(e) for e in errors]
    assert any(p.startswith("web.yaml: spec.checks.web.nmae: unknown key 'nmae'") for p in problems)


def test_every_error_of_a_check_is_reported_at_once() -> None:
    check = "{type: port, port: 99999, connect_timeout: never}"
    _, errors = load_text(policy(check, "ok", 1), "p.yaml")
    paths = {e.path for e in errors}
    assert {"spec.checks.web.port", "spec.checks.web.connect_timeout"} <= paths


def test_rule_metric_is_checked_against_the_type() -> None:
    _, errors = load_text(policy("{type: port, port: 80}", "latency", 1), "p.yaml")
    assert [e.path for e in errors] == ["spec.rule.when.metric"]
    assert "no metric 'latency'" in errors[0].problem


def test_command_metrics_are_dynamic() -> None:
    check = "{type: command, run: [/bin/true]}"
    policies, errors = load_text(policy(check, "anything_from_perfdata", 1), "p.yaml")
    assert errors == [] and policies


def test_process_pid_can_be_templated_into_a_step() -> None:
    step = ", '{{ web.pid }}'"
    check = "{type: process, cmdline: 'worker --queue'}"
    policies, errors = load_text(policy(check, "rss_bytes", 1e9, step), "p.yaml")
    assert errors == []
    assert policies[0].steps[0].argv == ("/bin/true", "{{ web.pid }}")
