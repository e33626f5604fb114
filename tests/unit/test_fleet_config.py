"""``control_plane:`` in the agent config: typed, defaults filled, every error with its path."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.fleet.config import ControlPlaneConfig, Reconnect

MINIMAL = {
    "address": "cp.example.com:7443",
    "insecure": True,
    "assignment_keys": "/etc/stanch/assignment-keys",
    "trust": "/etc/stanch/trust",
}


def parse(control_plane: Any, **raw: Any) -> ControlPlaneConfig | None:
    doc = {"policy_source": "bundle", "control_plane": control_plane, **raw}
    return parse_config(doc, "agent.yaml").control_plane


def errors(control_plane: Any, **raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(control_plane, **raw)
    return [str(e) for e in info.value.errors]


def test_absent_means_standalone() -> None:
    assert parse_config({}, "agent.yaml").control_plane is None
    assert parse_config({"control_plane": None}, "agent.yaml").control_plane is None


def test_defaults() -> None:
    cp = parse(MINIMAL)
    assert cp is not None
    assert cp.address == "cp.example.com:7443" and cp.insecure
    assert str(cp.assignment_keys) == "/etc/stanch/assignment-keys"
    assert cp.reconnect == Reconnect(1.0, 60.0)
    assert (cp.heartbeat, cp.report_batch, cp.outbox_limit) == (10.0, 100, 100_000)
    assert cp.trust_threshold is None and cp.keepalive == 30.0


def test_durations_and_numbers() -> None:
    cp = parse(
        {
            **MINIMAL,
            "reconnect": {"initial": "500ms", "max": "2m"},
            "heartbeat": "5s",
            "report_batch": 50,
            "outbox_limit": 1000,
            "trust_threshold": 2,
        }
    )
    assert cp is not None
    assert cp.reconnect == Reconnect(0.5, 120.0)
    assert (cp.heartbeat, cp.report_batch, cp.outbox_limit, cp.trust_threshold) == (
        5.0,
        50,
        1000,
        2,
    )


def test_a_control_plane_needs_the_bundle_policy_source() -> None:
    problems = errors(MINIMAL, policy_source="directory")
    assert problems == [
        "agent.yaml: policy_source: a control plane assigns signed bundles, so set "
        "policy_source: bundle (got 'directory'); a local policy directory would silently "
        "ignore its rollouts"
    ]


def test_plaintext_must_be_asked_for_until_mtls_exists() -> None:
    problems = errors({**MINIMAL, "insecure": False})
    assert len(problems) == 1 and "control_plane.insecure: mTLS" in problems[0]


def test_every_error_at_once_with_its_path() -> None:
    problems = errors(
        {
            "address": "no-port",
            "insecure": True,
            "reconnect": {"initial": "10s", "max": "1s", "jitter": 1},
            "report_batch": 0,
            "heartbeat": "soon",
        }
    )
    text = "\n".join(problems)
    for expected in (
        "control_plane.address: expected host:port, got 'no-port'",
        "control_plane.assignment_keys: required field missing",
        "control_plane.trust: required field missing",
        "control_plane.reconnect.jitter: unknown key 'jitter'",
        "control_plane.reconnect.max: must not be shorter than reconnect.initial",
        "control_plane.report_batch: must be at least 1",
        "control_plane.heartbeat: expected a duration",
    ):
        assert expected in text, f"missing {expected!r} in:\n{text}"
