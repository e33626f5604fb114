"""Each check type reads only its own keys and reports bad values with their full path."""

from __future__ import annotations

from typing import Any

import pytest

from agent.checks import CHECK_TYPES
from agent.checks.base import WatchesPids
from agent.checks.testing import build_check
from agent.policy.fields import ErrorSink, Fields

PATH = "spec.checks.c"


def parse(type_name: str, raw: dict[str, Any]) -> tuple[Any, list[str]]:
    """Parse like the loader does (minus the common keys) and return config and error strings."""
    sink = ErrorSink("p.yaml")
    f = Fields(raw, PATH, sink)
    config = CHECK_TYPES[type_name].parse(f)
    f.done()
    return config, [f"{e.path}: {e.problem}" for e in sink.errors]


def test_registry_has_every_type() -> None:
    assert set(CHECK_TYPES) == {
        "file", "cpu", "load", "memory", "disk", "process", "port", "http", "systemd",
        "command", "prometheus",
    }  # fmt: skip
    for name, ctype in CHECK_TYPES.items():
        assert ctype.name == name
        assert ctype.description
        if ctype.default_critical is not None and ctype.metrics is not None:
            assert ctype.default_critical.metric in ctype.metrics


@pytest.mark.parametrize("type_name", ["cpu", "load", "memory"])
def test_keyless_types_reject_any_key(type_name: str) -> None:
    _, errors = parse(type_name, {"path": "/"})
    assert errors == [f"{PATH}.path: unknown key 'path' (known keys: none)"]


def test_disk_needs_an_absolute_path() -> None:
    assert parse("disk", {"path": "/var"})[1] == []
    assert parse("disk", {"path": "var"})[1] == [f"{PATH}.path: must be an absolute path on the "
                                                 "filesystem to measure, e.g. /var"]  # fmt: skip
    assert parse("disk", {})[1] == [f"{PATH}.path: required field missing"]


def test_process_needs_exactly_one_selector() -> None:
    config, errors = parse("process", {"name": "nginx"})
    assert errors == [] and config.name == "nginx" and config.watch is True
    for raw in ({}, {"name": "a", "cmdline": "b"}):
        _, errors = parse("process", raw)
        assert len(errors) == 1 and errors[0].startswith(f"{PATH}: give exactly one of")


def test_process_reports_a_bad_regex_at_its_path() -> None:
    _, errors = parse("process", {"cmdline": "gunicorn (app"})
    assert len(errors) == 1
    assert errors[0].startswith(f"{PATH}.cmdline: invalid regular expression: missing ), ")


def test_process_pidfile_and_watch() -> None:
    config, errors = parse("process", {"pidfile": "/run/x.pid", "watch": False})
    assert errors == [] and config.pidfile == "/run/x.pid" and config.watch is False
    assert parse("process", {"pidfile": "run/x.pid"})[1] == [
        f"{PATH}.pidfile: must be an absolute path, e.g. /run/nginx.pid"
    ]
    assert parse("process", {"name": "x", "watch": "yes"})[1] == [
        f"{PATH}.watch: expected true/false, got str 'yes'"
    ]


def test_port_keys() -> None:
    config, errors = parse("port", {"port": 8080, "connect_timeout": "250ms"})
    assert errors == [] and (config.host, config.port, config.connect_timeout) == (
        "127.0.0.1", 8080, 0.25,
    )  # fmt: skip
    assert parse("port", {"port": 70000})[1] == [
        f"{PATH}.port: must be a TCP port between 1 and 65535, got 70000"
    ]
    assert parse("port", {"port": 0})[1] == [f"{PATH}.port: must be at least 1, got 0"]
    assert parse("port", {})[1] == [f"{PATH}.port: required field missing"]


def test_http_keys() -> None:
    config, errors = parse(
        "http", {"url": "https://example.test/h?x=1", "expect_status": 204, "headers": {"A": "b"}}
    )
    assert errors == [] and config.expect_status == 204 and config.headers == {"A": "b"}
    assert config.request_timeout == 5.0
    bad = parse("http", {"url": "ftp://x/"})[1]
    assert bad == [f"{PATH}.url: must be an absolute http:// or https:// URL, "
                   "e.g. http://127.0.0.1:8080/health"]  # fmt: skip
    assert parse("http", {"url": "http://h:99999/"})[1][0].startswith(f"{PATH}.url: invalid URL")
    assert "credentials" in parse("http", {"url": "http://u:p@h/"})[1][0]
    assert parse("http", {"url": "http://h/", "expect_status": 700})[1] == [
        f"{PATH}.expect_status: must be an HTTP status between 100 and 599, got 700"
    ]
    assert "line break" in parse("http", {"url": "http://h/", "headers": {"X": "a\nb"}})[1][0]


def test_systemd_keys() -> None:
    config, errors = parse("systemd", {"unit": "nginx.service"})
    assert errors == [] and config.systemctl == "systemctl"
    assert "not a unit name" in parse("systemd", {"unit": "--all"})[1][0]
    assert "not a unit name" in parse("systemd", {"unit": "a b"})[1][0]
    assert parse("systemd", {"unit": "x", "systemctl": "bin/systemctl"})[1] == [
        f"{PATH}.systemctl: must be a command name on the PATH or an absolute path"
    ]


def test_command_keys() -> None:
    config, errors = parse("command", {"run": ["/bin/check", "-w", 5], "env": {"A": "1"}})
    assert errors == [] and config.argv == ("/bin/check", "-w", "5") and config.env == {"A": "1"}
    assert config.plugin_timeout == 10.0
    config, errors = parse("command", {"run": "echo ok | cat", "shell": True})
    assert errors == [] and config.argv == ("/bin/sh", "-c", "echo ok | cat")
    assert parse("command", {"run": "echo ok"})[1][0].startswith(f"{PATH}.run: expected an argv")
    assert parse("command", {"run": ["a"], "shell": True})[1] == [
        f"{PATH}.run: with shell: true, 'run' is one string (the script for /bin/sh -c)"
    ]
    assert parse("command", {"run": ["a"], "plugin_timeout": "soon"})[1][0].startswith(
        f"{PATH}.plugin_timeout: expected a duration"
    )


def test_prometheus_keys() -> None:
    raw = {"url": "http://127.0.0.1:9100/metrics", "metric": "up", "labels": {"job": "node"}}
    config, errors = parse("prometheus", raw)
    assert errors == [] and config.labels == {"job": "node"}
    assert parse("prometheus", {**raw, "url": "https://h/metrics"})[1][0].startswith(
        f"{PATH}.url: must be an absolute http:// URL"
    )
    assert parse("prometheus", {**raw, "metric": "node-load"})[1][0].startswith(
        f"{PATH}.metric: 'node-load' is not a Prometheus metric name"
    )


def test_only_process_checks_watch_pids() -> None:
    assert isinstance(build_check("process", {"name": "x"}), WatchesPids)
    assert not isinstance(build_check("port", {"port": 1}), WatchesPids)
