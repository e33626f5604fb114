"""Policy YAML -> frozen model; every error reported at once as ``file: dotted.path: problem``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.checks.base import Status, Threshold
from agent.errors import FieldError
from agent.policy import loader
from agent.policy.loader import load_dir, load_file, load_text
from agent.policy.model import (
    AllOf,
    AnyOf,
    Budget,
    Compare,
    Escalation,
    Guardrails,
    Mode,
    Not,
    Policy,
    Severity,
    StateIs,
    Step,
    Verification,
    Window,
)

FULL = """\
apiVersion: stanch.dev/v1
kind: Policy
metadata:
  name: web-down
  description: restart nginx when it stops answering
  labels: {team: sre, tier: "1"}
spec:
  selector: {role: web, env: prod}
  severity: critical
  runbook: https://runbooks.example.com/web
  manual_minutes: 15
  mode: approve
  checks:
    nginx:
      type: process
      name: nginx
      interval: 5s
      timeout: 2s
      critical: {metric: count, op: "<", value: 1}
    http_port:
      type: port
      port: 8080
    heartbeat:
      type: file
      path: /run/web/heartbeat
      warning: {metric: age_seconds, op: gt, value: 60}
    var:
      type: disk
      path: /var
    plugin:
      type: command
      run: [/usr/lib/nagios/plugins/check_load, -w, "5"]
  rule:
    when:
      any:
        - {check: nginx, metric: count, op: "<", value: 1, for: 30s}
        - all:
            - {check: http_port, state: [critical, unknown]}
            - not: {check: heartbeat, metric: exists, op: "==", value: 0}
        - {check: var, metric: used_percent, op: ">", value: 90, clear: 80, for: 1m}
    unless:
      - {check: plugin, metric: load1, op: ">", value: 20}
      - {check: heartbeat, state: warning}
  remediation:
    steps:
      - name: restart
        run: [systemctl, restart, nginx]
        timeout: 1m
        env: {SYSTEMD_PAGER: "", RETRIES: 3}
        cwd: /
      - name: kill-biggest
        run: [kill, -TERM, "{{ nginx.pid }}"]
        continue_on_error: true
      - name: note
        shell: true
        run: echo restarted >> /var/log/stanch-web.log
  verify: {settle: 5s, timeout: 2m, interval: 3s}
  guardrails:
    cooldown: 10m
    budget: {max: 4, per: 1d}
    breaker: {after: 2}
    approval_ttl: 30m
    maintenance:
      - {name: weekend-backup, days: [sat, Sunday], start: "02:00", end: "04:30"}
      - {name: nightly, start: 22:00, end: "01:00"}
      - {name: migration, from: "2026-11-24T02:00:00+00:00", to: "2026-11-24T06:00:00+00:00"}
  escalation:
    sinks: [oncall, slack]
    repeat: 2h
"""

BASE: dict[str, Any] = {
    "apiVersion": "stanch.dev/v1",
    "kind": "Policy",
    "metadata": {"name": "hb"},
    "spec": {
        "checks": {"hb": {"type": "file", "path": "/run/hb"}},
        "rule": {"when": {"check": "hb", "metric": "age_seconds", "op": ">", "value": 60}},
        "remediation": {"steps": [{"name": "touch", "run": ["touch", "/run/hb"]}]},
    },
}


def base_yaml(name: str = "hb") -> str:
    doc = copy.deepcopy(BASE)
    doc["metadata"]["name"] = name
    return yaml.safe_dump(doc)


def errors_of(mutate: Callable[[dict[str, Any]], None], file: str = "p.yaml") -> list[str]:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    policies, errors = load_text(yaml.safe_dump(doc), file)
    assert policies == [] or errors == []
    return [str(e) for e in errors]


def load_one(mutate: Callable[[dict[str, Any]], None]) -> Policy:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    policies, errors = load_text(yaml.safe_dump(doc), "p.yaml")
    assert errors == []
    assert len(policies) == 1
    return policies[0]


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


# ---- a complete, valid policy --------------------------------------------------------------


@pytest.fixture(scope="module")
def full() -> Policy:
    policies, errors = load_text(FULL, "policies/web.yaml")
    assert errors == []
    assert len(policies) == 1
    return policies[0]


def test_full_policy_metadata(full: Policy) -> None:
    assert full.name == "web-down"
    assert full.source == "policies/web.yaml"
    assert full.description == "restart nginx when it stops answering"
    assert full.labels == (("team", "sre"), ("tier", "1"))
    assert full.selector == (("env", "prod"), ("role", "web"))
    assert full.severity is Severity.CRITICAL
    assert full.mode is Mode.APPROVE
    assert full.runbook == "https://runbooks.example.com/web"
    assert full.manual_minutes == 15.0


def test_full_policy_checks(full: Policy) -> None:
    assert [c.name for c in full.checks] == ["nginx", "http_port", "heartbeat", "var", "plugin"]
    assert [c.type for c in full.checks] == ["process", "port", "file", "disk", "command"]
    nginx = full.check("nginx")
    assert (nginx.interval, nginx.timeout) == (5.0, 2.0)
    assert nginx.critical == Threshold("count", "<", 1.0)
    assert nginx.warning is None
    assert nginx.config.name == "nginx"
    heartbeat = full.check("heartbeat")
    assert heartbeat.warning == Threshold("age_seconds", ">", 60.0)
    assert heartbeat.config.path == "/run/web/heartbeat"
    port = full.check("http_port")
    assert (port.interval, port.timeout) == (10.0, 10.0)
    assert port.config.port == 8080
    assert full.check("plugin").config.argv == ("/usr/lib/nagios/plugins/check_load", "-w", "5")
    with pytest.raises(KeyError):
        full.check("nope")


def test_full_policy_rule(full: Policy) -> None:
    when = full.rule.when
    assert isinstance(when, AnyOf)
    first, second, third = when.items
    assert first == Compare("spec.rule.when.any[0]", "nginx", "count", "<", 1.0, None, 30.0)
    assert isinstance(second, AllOf)
    state, negated = second.items
    assert state == StateIs(
        "spec.rule.when.any[1].all[0]",
        "http_port",
        frozenset({Status.CRITICAL, Status.UNKNOWN}),
    )
    assert isinstance(negated, Not)
    assert negated.item == Compare(
        "spec.rule.when.any[1].all[1].not", "heartbeat", "exists", "==", 0.0
    )
    assert third == Compare("spec.rule.when.any[2]", "var", "used_percent", ">", 90.0, 80.0, 60.0)
    load, hb_warning = full.rule.unless
    assert load == Compare("spec.rule.unless[0]", "plugin", "load1", ">", 20.0)
    assert hb_warning == StateIs("spec.rule.unless[1]", "heartbeat", frozenset({Status.WARNING}))


def test_full_policy_steps(full: Policy) -> None:
    assert full.steps == (
        Step(
            "restart",
            ("systemctl", "restart", "nginx"),
            False,
            60.0,
            (("RETRIES", "3"), ("SYSTEMD_PAGER", "")),
            "/",
            False,
        ),
        Step("kill-biggest", ("kill", "-TERM", "{{ nginx.pid }}"), continue_on_error=True),
        Step("note", ("echo restarted >> /var/log/stanch-web.log",), shell=True),
    )
    assert full.verification == Verification(settle=5.0, timeout=120.0, interval=3.0)


def test_full_policy_guardrails_and_escalation(full: Policy) -> None:
    g = full.guardrails
    assert g.cooldown == 600.0
    assert g.budget == Budget(max_runs=4, window=86400.0)
    assert g.breaker_after == 2
    assert g.approval_ttl == 1800.0
    assert g.maintenance == (
        Window(days=frozenset({5, 6}), start_minute=120, end_minute=270, name="weekend-backup"),
        # Unquoted 22:00 is a YAML 1.1 base-60 integer (1320); it still means 22:00.
        Window(start_minute=22 * 60, end_minute=60, name="nightly"),
        Window(
            start_at=utc(2026, 11, 24, 2),
            end_at=utc(2026, 11, 24, 6),
            name="migration",
        ),
    )
    assert full.escalation == Escalation(sinks=("oncall", "slack"), repeat=7200.0)


def test_defaults_for_a_minimal_policy() -> None:
    p = load_one(lambda d: None)
    assert p.severity is Severity.WARNING
    assert p.mode is Mode.AUTO
    assert p.selector == ()
    assert p.labels == ()
    assert p.rule.unless == ()
    assert p.guardrails == Guardrails()
    assert p.guardrails.cooldown == 300.0
    assert p.guardrails.budget == Budget(3, 3600.0)
    assert p.guardrails.breaker_after == 3
    assert p.guardrails.approval_ttl == 3600.0
    assert p.guardrails.maintenance == ()
    assert p.verification == Verification()
    assert p.escalation == Escalation()
    assert p.steps == (Step("touch", ("touch", "/run/hb")),)


def test_selector_match_labels_form_and_selects() -> None:
    p = load_one(lambda d: d["spec"].update(selector={"matchLabels": {"role": "web", "n": 1}}))
    assert p.selector == (("n", "1"), ("role", "web"))
    assert p.selects({"role": "web", "n": "1", "extra": "x"})
    assert not p.selects({"role": "db", "n": "1"})
    assert not p.selects({})
    assert load_one(lambda d: None).selects({})


def test_op_aliases_and_text_values() -> None:
    p = load_one(
        lambda d: d["spec"]["rule"].update(
            when={"check": "hb", "metric": "exists", "op": "ne", "value": "yes"}
        )
    )
    assert p.rule.when == Compare("spec.rule.when", "hb", "exists", "!=", "yes")


def test_single_state_string_and_numbers_in_argv() -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["spec"]["rule"]["when"] = {"check": "hb", "state": "critical", "for": "1m30s"}
        d["spec"]["remediation"]["steps"][0]["run"] = ["sleep", 5, 0.5]

    p = load_one(mutate)
    assert p.rule.when == StateIs("spec.rule.when", "hb", frozenset({Status.CRITICAL}), 90.0)
    assert p.steps[0].argv == ("sleep", "5", "0.5")


def test_same_text_same_policy_changed_text_changed_policy() -> None:
    (a,), _ = load_text(base_yaml(), "a.yaml")
    (b,), _ = load_text(base_yaml() + "# a comment\n", "a.yaml")
    (c,), _ = load_text(base_yaml().replace("60", "61"), "a.yaml")
    assert a == b
    assert a != c


# ---- every error kind, with file and dotted path --------------------------------------------

CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown top-level key": (
        lambda d: d.update(extra=1),
        "p.yaml: extra: unknown key 'extra' (known keys: apiVersion, kind, metadata, spec)",
    ),
    "typo in metadata": (
        lambda d: d["metadata"].update(nmae="x"),
        "p.yaml: metadata.nmae: unknown key 'nmae'",
    ),
    "typo in a check": (
        lambda d: d["spec"]["checks"]["hb"].update(pth="/x"),
        "p.yaml: spec.checks.hb.pth: unknown key 'pth'",
    ),
    "typo in a step": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(timout="5s"),
        "p.yaml: spec.remediation.steps[0].timout: unknown key 'timout'",
    ),
    "typo in guardrails": (
        lambda d: d["spec"].update(guardrails={"budget": {"max": 2, "window": "1h"}}),
        "p.yaml: spec.guardrails.budget.window: unknown key 'window'",
    ),
    "typo in a condition": (
        lambda d: d["spec"]["rule"]["when"].update(fro="1m"),
        "p.yaml: spec.rule.when.fro: unknown key 'fro'",
    ),
    "missing metadata": (
        lambda d: d.pop("metadata"),
        "p.yaml: metadata: required field missing",
    ),
    "missing name": (
        lambda d: d["metadata"].pop("name"),
        "p.yaml: metadata.name: required field missing",
    ),
    "missing apiVersion": (
        lambda d: d.pop("apiVersion"),
        "p.yaml: apiVersion: required field missing",
    ),
    "missing rule": (
        lambda d: d["spec"].pop("rule"),
        "p.yaml: spec.rule: required field missing",
    ),
    "missing when": (
        lambda d: d["spec"]["rule"].pop("when"),
        "p.yaml: spec.rule.when: required field missing",
    ),
    "missing remediation": (
        lambda d: d["spec"].pop("remediation"),
        "p.yaml: spec.remediation: required field missing",
    ),
    "missing steps": (
        lambda d: d["spec"]["remediation"].pop("steps"),
        "p.yaml: spec.remediation.steps: required field missing",
    ),
    "empty steps": (
        lambda d: d["spec"]["remediation"].update(steps=[]),
        "p.yaml: spec.remediation.steps: needs at least one step",
    ),
    "missing step name": (
        lambda d: d["spec"]["remediation"]["steps"][0].pop("name"),
        "p.yaml: spec.remediation.steps[0].name: required field missing",
    ),
    "missing check type": (
        lambda d: d["spec"]["checks"]["hb"].pop("type"),
        "p.yaml: spec.checks.hb.type: required field missing",
    ),
    "missing check-type key": (
        lambda d: d["spec"]["checks"]["hb"].pop("path"),
        "p.yaml: spec.checks.hb.path: required field missing",
    ),
    "missing value": (
        lambda d: d["spec"]["rule"]["when"].pop("value"),
        "p.yaml: spec.rule.when.value: required field missing",
    ),
    "string for an integer": (
        lambda d: d["spec"].update(guardrails={"budget": {"max": "three"}}),
        "p.yaml: spec.guardrails.budget.max: expected an integer, got str 'three'",
    ),
    "boolean for an integer": (
        lambda d: d["spec"].update(guardrails={"breaker": {"after": True}}),
        "p.yaml: spec.guardrails.breaker.after: expected an integer, got a boolean",
    ),
    "float for an integer": (
        lambda d: d["spec"].update(guardrails={"budget": {"max": 2.5}}),
        "p.yaml: spec.guardrails.budget.max: expected an integer, got 2.5",
    ),
    "number for a string": (
        lambda d: d["spec"].update(runbook=42),
        "p.yaml: spec.runbook: expected a string, got int 42",
    ),
    "string for a boolean": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(continue_on_error="yes"),
        "p.yaml: spec.remediation.steps[0].continue_on_error: expected true/false, got str 'yes'",
    ),
    "list for a mapping": (
        lambda d: d.update(metadata=["hb"]),
        "p.yaml: metadata: expected a mapping, got list",
    ),
    "list of numbers for sinks": (
        lambda d: d["spec"].update(escalation={"sinks": [1]}),
        "p.yaml: spec.escalation.sinks: expected a list of strings",
    ),
    "non-string label": (
        lambda d: d["metadata"].update(labels={"team": ["a"]}),
        "p.yaml: metadata.labels.team: expected a string value",
    ),
    "bad duration": (
        lambda d: d["spec"]["checks"]["hb"].update(interval="10 minutes"),
        "p.yaml: spec.checks.hb.interval: expected a duration like '30s', '5m', '2h' or '1h30m', "
        "got '10 minutes'",
    ),
    "bad for": (
        lambda d: d["spec"]["rule"]["when"].update({"for": "soon"}),
        "p.yaml: spec.rule.when.for: expected a duration like",
    ),
    "negative duration": (
        lambda d: d["spec"].update(verify={"settle": -1}),
        "p.yaml: spec.verify.settle: duration must not be negative, got -1",
    ),
    "interval below 1s": (
        lambda d: d["spec"]["checks"]["hb"].update(interval="500ms"),
        "p.yaml: spec.checks.hb.interval: must be at least 1s, got '500ms'",
    ),
    "step timeout zero": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(timeout="0s"),
        "p.yaml: spec.remediation.steps[0].timeout: must be at least 0.1s, got '0s'",
    ),
    "budget below minimum": (
        lambda d: d["spec"].update(guardrails={"budget": {"max": 0}}),
        "p.yaml: spec.guardrails.budget.max: must be at least 1, got 0",
    ),
    "escalation repeat zero": (
        lambda d: d["spec"].update(escalation={"repeat": "0s"}),
        "p.yaml: spec.escalation.repeat: must be at least 1s, got '0s'",
    ),
    "unknown check type": (
        lambda d: d["spec"]["checks"]["hb"].update(type="ftp"),
        "p.yaml: spec.checks.hb.type: unknown check type 'ftp'; known: file, ",
    ),
    "unknown metric in the rule": (
        lambda d: d["spec"]["rule"]["when"].update(metric="colour"),
        "p.yaml: spec.rule.when.metric: check 'hb' (file) has no metric 'colour'; "
        "known: age_seconds, exists, size_bytes",
    ),
    "unknown metric in a threshold": (
        lambda d: d["spec"]["checks"]["hb"].update(
            warning={"metric": "colour", "op": ">", "value": 1}
        ),
        "p.yaml: spec.checks.hb.warning.metric: unknown metric 'colour'",
    ),
    "unknown op": (
        lambda d: d["spec"]["rule"]["when"].update(op="~"),
        "p.yaml: spec.rule.when.op: must be one of !=, <, <=, ==, >, >=, eq, ge, gt, le, lt, ne; "
        "got '~'",
    ),
    "unknown check in a rule": (
        lambda d: d["spec"]["rule"]["when"].update(check="nope"),
        "p.yaml: spec.rule.when.check: no check named 'nope' in spec.checks; known: hb",
    ),
    "unknown check deep in all/not": (
        lambda d: d["spec"]["rule"].update(
            when={"all": [{"check": "hb", "state": "ok"}, {"not": {"check": "zz", "state": "ok"}}]}
        ),
        "p.yaml: spec.rule.when.all[1].not.check: no check named 'zz' in spec.checks",
    ),
    "unknown check in unless": (
        lambda d: d["spec"]["rule"].update(unless=[{"check": "zz", "state": "ok"}]),
        "p.yaml: spec.rule.unless[0].check: no check named 'zz'",
    ),
    "bad state": (
        lambda d: d["spec"]["rule"].update(when={"check": "hb", "state": ["ok", "broken"]}),
        "p.yaml: spec.rule.when.state: unknown state 'broken'; "
        "use ok, warning, critical or unknown",
    ),
    "empty all": (
        lambda d: d["spec"]["rule"].update(when={"all": []}),
        "p.yaml: spec.rule.when.all: needs at least one condition",
    ),
    "all and check together": (
        lambda d: d["spec"]["rule"]["when"].update(all=[{"check": "hb", "state": "ok"}]),
        "p.yaml: spec.rule.when: use exactly one of 'all', 'any', 'not' or 'check'",
    ),
    "condition without check": (
        lambda d: d["spec"]["rule"].update(when={"metric": "exists"}),
        "p.yaml: spec.rule.when: a condition needs 'check'",
    ),
    "clear with ==": (
        lambda d: d["spec"]["rule"]["when"].update(op="==", clear=10),
        "p.yaml: spec.rule.when.clear: 'clear' (hysteresis) needs an ordering op: >, >=, < or <=",
    ),
    "clear above a > value": (
        lambda d: d["spec"]["rule"]["when"].update(clear=70),
        "p.yaml: spec.rule.when.clear: must be at or below 'value' (60.0)",
    ),
    "clear below a < value": (
        lambda d: d["spec"]["rule"]["when"].update(op="<", clear=50),
        "p.yaml: spec.rule.when.clear: must be at or above 'value' (60.0)",
    ),
    "text value with >": (
        lambda d: d["spec"]["rule"]["when"].update(value="high"),
        "p.yaml: spec.rule.when.value: a text value only works with == or !=, not >",
    ),
    "template spliced into a larger argument": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(
            run=["echo", "size={{ hb.size_bytes }}"]
        ),
        "p.yaml: spec.remediation.steps[0].run[1]: a template must be the whole argument "
        "('{{ check.metric }}'), never spliced into a larger string",
    ),
    "two templates in one argument": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(
            run=["echo", "{{ hb.size_bytes }}{{ hb.exists }}"]
        ),
        "p.yaml: spec.remediation.steps[0].run[1]: a template must be the whole argument",
    ),
    "malformed template": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(run=["echo", "{{ hb.size"]),
        "p.yaml: spec.remediation.steps[0].run[1]: malformed template; write '{{ check.metric }}'",
    ),
    "template naming an unknown check": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(run=["kill", "{{ web.pid }}"]),
        "p.yaml: spec.remediation.steps[0].run[1]: template 'web.pid' must name a check",
    ),
    "template naming an unknown metric": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(run=["kill", "{{ hb.pid }}"]),
        "p.yaml: spec.remediation.steps[0].run[1]: check 'hb' has no metric 'pid'",
    ),
    "template in a shell string": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(
            shell=True, run="kill {{ hb.size_bytes }}"
        ),
        "p.yaml: spec.remediation.steps[0].run: check values cannot be templated into a shell "
        "string",
    ),
    "shell: true with a list": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(shell=True),
        "p.yaml: spec.remediation.steps[0].run: with shell: true, 'run' is one string",
    ),
    "a string without shell: true": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(run="touch /run/hb"),
        "p.yaml: spec.remediation.steps[0].run: expected an argv list such as",
    ),
    "relative cwd": (
        lambda d: d["spec"]["remediation"]["steps"][0].update(cwd="tmp"),
        "p.yaml: spec.remediation.steps[0].cwd: must be an absolute path",
    ),
    "wrong apiVersion": (
        lambda d: d.update(apiVersion="stanch.dev/v2"),
        "p.yaml: apiVersion: unsupported apiVersion 'stanch.dev/v2'; this agent reads "
        "stanch.dev/v1",
    ),
    "wrong kind": (
        lambda d: d.update(kind="Rule"),
        "p.yaml: kind: expected 'Policy', got 'Rule'",
    ),
    "bad policy name": (
        lambda d: d["metadata"].update(name="Web Server"),
        "p.yaml: metadata.name: use lowercase letters, digits",
    ),
    "bad severity": (
        lambda d: d["spec"].update(severity="urgent"),
        "p.yaml: spec.severity: must be one of critical, info, warning; got 'urgent'",
    ),
    "bad mode": (
        lambda d: d["spec"].update(mode="yolo"),
        "p.yaml: spec.mode: must be one of approve, auto, observe; got 'yolo'",
    ),
    "empty checks": (
        lambda d: d["spec"].update(checks={}),
        "p.yaml: spec.checks: expected a non-empty mapping of check name to check",
    ),
    "bad check name": (
        lambda d: d["spec"]["checks"].update({"Bad Name": {"type": "file", "path": "/x"}}),
        "p.yaml: spec.checks.Bad Name: check names use letters, digits, '_' or '-'",
    ),
    "nested selector value": (
        lambda d: d["spec"].update(selector={"role": {"a": 1}}),
        "p.yaml: spec.selector.role: selector values must be strings",
    ),
    "unknown day": (
        lambda d: d["spec"].update(
            guardrails={"maintenance": [{"days": ["funday"], "start": "01:00", "end": "02:00"}]}
        ),
        "p.yaml: spec.guardrails.maintenance[0].days: unknown day 'funday'",
    ),
    "bad time of day": (
        lambda d: d["spec"].update(guardrails={"maintenance": [{"start": "24:00", "end": "2"}]}),
        "p.yaml: spec.guardrails.maintenance[0].start: expected a time of day as HH:MM (UTC)",
    ),
    "absolute window without timezone": (
        lambda d: d["spec"].update(
            guardrails={
                "maintenance": [{"from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00Z"}]
            }
        ),
        "p.yaml: spec.guardrails.maintenance[0].from: give a timezone",
    ),
    "absolute window backwards": (
        lambda d: d["spec"].update(
            guardrails={
                "maintenance": [
                    {"from": "2026-01-02T00:00:00+00:00", "to": "2026-01-01T00:00:00+00:00"}
                ]
            }
        ),
        "p.yaml: spec.guardrails.maintenance[0]: 'to' must be after 'from'",
    ),
    "absolute window not a timestamp": (
        lambda d: d["spec"].update(
            guardrails={"maintenance": [{"from": "tuesday", "to": "2026-01-01T00:00:00+00:00"}]}
        ),
        "p.yaml: spec.guardrails.maintenance[0].from: expected an ISO 8601 timestamp",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_reports_file_path_and_problem(case: str) -> None:
    mutate, expected = CASES[case]
    errors = errors_of(mutate)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_error_is_reported_at_once() -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["metadata"]["nmae"] = "x"
        d["spec"]["checks"]["hb"]["interval"] = "1 hour"
        d["spec"]["rule"]["when"]["metric"] = "colour"
        d["spec"]["remediation"]["steps"][0]["run"] = ["echo", "x{{ hb.exists }}"]
        d["spec"]["guardrails"] = {"cooldown": "never"}

    errors = errors_of(mutate)
    paths = [e.split(": ")[1] for e in errors]
    assert paths == [
        "metadata.nmae",
        "spec.checks.hb.interval",
        "spec.rule.when.metric",
        "spec.remediation.steps[0].run[1]",
        "spec.guardrails.cooldown",
    ]


def test_field_error_str_without_path() -> None:
    assert str(FieldError("p.yaml", "", "no policy documents in file")) == (
        "p.yaml: no policy documents in file"
    )


def test_other_check_types_validate_their_own_keys() -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["spec"]["checks"] = {
            "svc": {"type": "process", "name": "nginx", "cmdline": "nginx"},
            "web": {"type": "port", "port": 70000},
            "var": {"type": "disk", "path": "var"},
            "plugin": {"type": "command", "run": "check_load"},
        }
        d["spec"]["rule"]["when"] = {"check": "web", "state": "critical"}

    errors = errors_of(mutate)
    assert any(e.startswith("p.yaml: spec.checks.svc: give exactly one of 'name'") for e in errors)
    assert "p.yaml: spec.checks.web.port: must be a TCP port between 1 and 65535, got 70000" in (
        errors
    )
    assert any(
        e.startswith("p.yaml: spec.checks.var.path: must be an absolute path") for e in errors
    )
    assert any(e.startswith("p.yaml: spec.checks.plugin.run: ") for e in errors), errors


def test_command_check_metrics_are_dynamic() -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["spec"]["checks"] = {"plugin": {"type": "command", "run": ["/bin/check_x"]}}
        d["spec"]["rule"]["when"] = {"check": "plugin", "metric": "anything", "op": ">", "value": 1}
        d["spec"]["remediation"]["steps"][0]["run"] = ["echo", "{{ plugin.whatever }}"]

    p = load_one(mutate)
    assert p.rule.when == Compare("spec.rule.when", "plugin", "anything", ">", 1.0)


def test_clear_on_the_right_side_is_accepted() -> None:
    p = load_one(lambda d: d["spec"]["rule"]["when"].update(op="<", value=10, clear=20))
    assert p.rule.when == Compare("spec.rule.when", "hb", "age_seconds", "<", 10.0, 20.0)


def test_maintenance_start_out_of_range_is_an_error_not_a_silent_drop() -> None:
    # YAML 1.1 reads an unquoted 25:00 as the integer 1500: no time of day. The window must be
    # rejected with its path, never silently dropped (the policy would act in maintenance).
    text = base_yaml() + "  guardrails:\n    maintenance:\n      - {start: 25:00, end: 26:00}\n"
    doc = yaml.safe_load(text)
    assert doc["spec"]["guardrails"]["maintenance"][0]["start"] == 1500
    policies, errors = load_text(text, "p.yaml")
    assert policies == []
    assert [str(e) for e in errors] == [
        "p.yaml: spec.guardrails.maintenance[0].start: expected a time of day as HH:MM (UTC)",
        "p.yaml: spec.guardrails.maintenance[0].end: expected a time of day as HH:MM (UTC)",
    ]


# ---- files, documents and directories -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("apiVersion: stanch.dev/v1\nmetadata:\n  name: a\n   bad: indent\n", "line 4, column 7"),
        ("apiVersion: stanch.dev/v1\nmetadata: {name: a\n", "line 3, column 1"),
        ("a: 1\n  b: 2\n", "line 2, column 4"),
    ],
)
def test_invalid_yaml_reports_line_and_column(text: str, where: str) -> None:
    policies, errors = load_text(text, "bad.yaml")
    assert policies == []
    assert len(errors) == 1
    assert str(errors[0]).startswith(f"bad.yaml: {where}: invalid YAML: ")


def test_empty_file_and_non_mapping_document() -> None:
    assert [str(e) for e in load_text("# nothing\n", "e.yaml")[1]] == [
        "e.yaml: no policy documents in file"
    ]
    assert [str(e) for e in load_text("- 1\n", "l.yaml")[1]] == [
        "l.yaml: expected a mapping, got list"
    ]


def test_multi_document_file_loads_each_and_prefixes_paths() -> None:
    two = base_yaml("a") + "---\n" + base_yaml("b")
    policies, errors = load_text(two, "m.yaml")
    assert errors == []
    assert [p.name for p in policies] == ["a", "b"]
    assert policies[0].rule.when.id == "[0].spec.rule.when"
    assert policies[1].rule.when.id == "[1].spec.rule.when"


def test_one_bad_document_fails_the_whole_file() -> None:
    bad = base_yaml("b").replace("age_seconds", "colour")
    policies, errors = load_text(base_yaml("a") + "---\n" + bad, "m.yaml")
    assert policies == []
    assert [str(e).split(": ")[1] for e in errors] == ["[1].spec.rule.when.metric"]


def test_load_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(base_yaml() + "#" + "x" * loader.MAX_POLICY_FILE_BYTES + "\n")
    policies, errors = load_file(path)
    assert policies == []
    assert [str(e) for e in errors] == [
        f"{path}: file is larger than {loader.MAX_POLICY_FILE_BYTES} bytes"
    ]


def test_load_file_missing(tmp_path: Path) -> None:
    policies, errors = load_file(tmp_path / "gone.yaml")
    assert policies == []
    assert str(errors[0]) == f"{tmp_path / 'gone.yaml'}: cannot read: No such file or directory"


def test_load_dir_keeps_good_files_when_one_is_bad(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(base_yaml("a"))
    (tmp_path / "b.yml").write_text(base_yaml("b").replace("age_seconds", "colour"))
    (tmp_path / "c.yaml").write_text("spec: [unclosed\n")
    (tmp_path / "d.yaml").write_text(base_yaml("d"))
    (tmp_path / "notes.txt").write_text("not a policy")
    (tmp_path / "sub.yaml").mkdir()
    result = load_dir(tmp_path)
    assert [p.name for p in result.policies] == ["a", "d"]
    assert result.failed_files == {str(tmp_path / "b.yml"), str(tmp_path / "c.yaml")}
    assert [e.file for e in result.errors] == [str(tmp_path / "b.yml"), str(tmp_path / "c.yaml")]
    assert result.errors[0].path == "spec.rule.when.metric"
    assert result.errors[1].problem.startswith("invalid YAML")


def test_load_dir_rejects_duplicate_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(base_yaml("web"))
    (tmp_path / "b.yaml").write_text(base_yaml("web"))
    (tmp_path / "c.yaml").write_text(base_yaml("other"))
    result = load_dir(tmp_path)
    assert [(p.name, p.source) for p in result.policies] == [
        ("web", str(tmp_path / "a.yaml")),
        ("other", str(tmp_path / "c.yaml")),
    ]
    assert [str(e) for e in result.errors] == [
        f"{tmp_path / 'b.yaml'}: metadata.name: policy 'web' is already defined in "
        f"{tmp_path / 'a.yaml'}"
    ]
    assert result.failed_files == {str(tmp_path / "b.yaml")}


def test_load_dir_on_a_missing_directory(tmp_path: Path) -> None:
    result = load_dir(tmp_path / "nope")
    assert result.policies == []
    assert [str(e) for e in result.errors] == [
        f"{tmp_path / 'nope'}: not a directory of policy files"
    ]


def test_shipped_example_policies_load() -> None:
    root = Path(__file__).resolve().parents[2] / "policies"
    result = load_dir(root)
    assert result.errors == []
    assert len(result.policies) >= 4
