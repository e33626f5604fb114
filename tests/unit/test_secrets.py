"""Sink secrets come from files or the environment named in the AGENT config: exposed files are
refused, the values are registered with the redactor, and a policy (or bundle) that inlines a
secret is rejected with the file, the field and what to do."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.policy.loader import load_text
from agent.redact import REDACTED
from agent.secrets import SecretError, SecretRef, exposure, looks_secret
from agent.sinks import DeliveryError, WebhookConfig, WebhookSink

KEY = "R0UTING-KEY-0123456789abcdef"
HOOK = "https://hooks.slack.com/services/T0/B0/SLACKSECRET99"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can enter (pytest's tmp_path base is 0700, which hides all)."""
    d = Path(tempfile.mkdtemp(prefix="stanch-secrets-"))
    try:
        d.chmod(0o755)
        for p in d.parents:
            if not os.stat(p).st_mode & 0o001:
                pytest.skip(f"{p} is not searchable by others; cannot build an exposed file")
        yield d
    finally:
        shutil.rmtree(d)


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_exposure_is_judged_by_what_others_can_reach(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    f = write(d / "key", KEY, 0o644)
    tmp_path.chmod(0o700)  # others cannot get past this directory: not exposed
    assert exposure(f) is None
    assert exposure(tmp_path / "missing") is None


def test_a_world_readable_secret_file_is_a_load_error(open_dir: Path) -> None:
    key = write(open_dir / "pd-key", KEY, 0o644)
    raw = {"sinks": {"pager": {"type": "pagerduty", "routing_key_file": str(key)}}}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "/etc/stanch/agent.yaml")
    (error,) = err.value.errors
    assert error.path == "sinks.pager.routing_key_file"
    assert "readable by every user on this host (mode 0644)" in error.problem
    assert f"chmod 600 {key}" in error.problem
    key.chmod(0o600)
    assert parse_config(raw).redactor.redact(f"key={KEY}")  # loads once fixed


def test_a_world_writable_secret_file_is_refused_at_send_time(open_dir: Path) -> None:
    url = write(open_dir / "hook", HOOK, 0o600)
    sink = WebhookSink(WebhookConfig(url_file=str(url), timeout=1.0))
    url.chmod(0o606)
    with pytest.raises(DeliveryError, match="readable and writable by every user") as err:
        sink.send({"host": "h", "policy": "p"})
    assert err.value.retryable  # fixing the mode makes the next attempt work
    assert "SLACKSECRET99" not in err.value.message


def test_resolved_secrets_are_registered_with_the_redactor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = write(tmp_path / "pd-key", KEY, 0o600)
    monkeypatch.setenv("STANCH_TEST_SLACK_URL", HOOK)
    raw = {
        "sinks": {
            "pager": {"type": "pagerduty", "routing_key_file": str(key)},
            "chat": {"type": "slack", "url_env": "STANCH_TEST_SLACK_URL"},
            "later": {"type": "webhook", "url_file": str(tmp_path / "not-there-yet")},
            "plain": {"type": "webhook", "url": "https://alerts.example.com/hook"},
        }
    }
    r = parse_config(raw).redactor
    assert r.redact(f"curl -d key={KEY}") == f"curl -d key={REDACTED}"
    assert r.redact(f"posted {KEY} to {HOOK}") == (
        f"posted {REDACTED} to https://hooks.slack.com/{REDACTED}"
    )
    # A URL given inline is not a secret: it stays readable.
    assert r.redact("https://alerts.example.com/hook") == "https://alerts.example.com/hook"


def test_secret_ref_reports_what_is_wrong_without_the_value(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty", "", 0o600)
    with pytest.raises(SecretError, match=f"routing_key_file {empty} is empty"):
        SecretRef(file=str(empty)).read("routing_key")
    with pytest.raises(SecretError, match="NOPE_NOT_SET .routing_key_env. is not set"):
        SecretRef(env="NOPE_NOT_SET").read("routing_key", {})
    assert SecretRef(env="K").read("routing_key", {"K": f" {KEY} "}) == (KEY, True)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("GITHUB_TOKEN", True),
        ("DB_PASSWORD", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("MY_API_KEY", True),
        ("TOKEN", True),
        ("GITHUB_TOKEN_FILE", False),
        ("MODE", False),
        ("PATH", False),
    ],
)
def test_looks_secret(name: str, secret: bool) -> None:
    assert looks_secret(name) is secret


POLICY = """
apiVersion: stanch.dev/v1
kind: Policy
metadata: {{name: web}}
spec:
  checks: {{flag: {{type: file, path: /run/flag}}}}
  rule: {{when: {{check: flag, metric: exists, op: "<", value: 1}}}}
  remediation:
    steps:
      - name: fix
        run: [touch, /run/flag]
{step_extra}
{spec_extra}
"""


def load(step_extra: str = "", spec_extra: str = "") -> list[str]:
    text = POLICY.format(step_extra=step_extra, spec_extra=spec_extra)
    policies, errors = load_text(text, "policies/web.yaml")
    assert not (policies and errors)
    return [str(e) for e in errors]


def test_a_policy_that_inlines_a_secret_env_is_rejected() -> None:
    (error,) = load("        env: {GITHUB_TOKEN: ghp_abc, MODE: fast}")
    assert error.startswith("policies/web.yaml: spec.remediation.steps[0].env.GITHUB_TOKEN:")
    assert "looks like a secret" in error and "GITHUB_TOKEN_FILE" in error
    assert load("        env: {GITHUB_TOKEN_FILE: /etc/stanch/secrets/gh, MODE: fast}") == []


@pytest.mark.parametrize(
    ("spec_extra", "path"),
    [
        ("  escalation: {sinks: [pager], routing_key: abc123}", "spec.escalation.routing_key"),
        ("  escalation: {url: 'https://hooks.slack.com/x'}", "spec.escalation.url"),
        ("  escalation: {url_file: /etc/x}", "spec.escalation.url_file"),
        ("  sinks: {pager: {type: pagerduty, routing_key: abc}}", "spec.sinks"),
    ],
)
def test_a_policy_that_carries_sink_settings_is_rejected(spec_extra: str, path: str) -> None:
    (error,) = load(spec_extra=spec_extra)
    assert error.startswith(f"policies/web.yaml: {path}:")
    assert "agent config" in error and "signed once, copied to every host" in error
