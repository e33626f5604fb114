"""Redaction of command output: built-in patterns, the operator's ``redact:`` patterns (validated
at load), literal secrets (URLs keep scheme and host), and the cost on 64 KiB of output."""

from __future__ import annotations

import time

import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.policy.model import Step
from agent.redact import DEFAULT_REDACTOR, REDACTED, PatternError, Redactor, compile_pattern
from agent.remediate import StepRecord, SubprocessRunner, run_steps

PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
    "-----END OPENSSH PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer eyJhbGciOi.abc-def_123", f"Authorization: Bearer {REDACTED}"),
        (
            "curl -H 'authorization: bearer abcdefgh12'",
            f"curl -H 'authorization: bearer {REDACTED}'",
        ),
        ("db_password=hunter2! next", f"db_password={REDACTED} next"),
        ("PASSWORD: 's3cr3t value'", f"PASSWORD: {REDACTED}"),
        ('api_key="k-123"', f"api_key={REDACTED}"),
        ("GITHUB_TOKEN=ghp_abcdef1234 rest", f"GITHUB_TOKEN={REDACTED} rest"),
        ("url?token=abc123&page=2", f"url?token={REDACTED}&page=2"),
        ("key id AKIAIOSFODNN7EXAMPLE in use", f"key id {REDACTED} in use"),
        ("Authorization: stk_0123abcd_9f8e7d6c5b4a", f"Authorization: {REDACTED}"),
        ("psql postgres://app:pa55w0rd@db:5432/app", f"psql postgres://{REDACTED}@db:5432/app"),
        (
            "fetch https://user:tok@git.example.com/x.git",
            f"fetch https://{REDACTED}@git.example.com/x.git",
        ),
        (f"before\n{PRIVATE_KEY}\nafter", f"before\n{REDACTED}\nafter"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEcut-off", REDACTED),
    ],
)
def test_builtin_patterns(text: str, expected: str) -> None:
    assert DEFAULT_REDACTOR.redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "restarted nginx.service (pid 4242) in 0.3s",
        "https://example.com/status?ok=1",
        "ssh-keygen wrote /root/.ssh/id_ed25519.pub",
        "",
    ],
)
def test_ordinary_output_is_left_alone(text: str) -> None:
    assert DEFAULT_REDACTOR.redact(text) == text


def test_config_patterns_whole_match_or_the_secret_group() -> None:
    r = Redactor.build([r"ACME-[0-9a-f]{8}", r"session=(?P<secret>\w+)"])
    assert r.redact("id ACME-deadbeef, session=abc123 ok") == (
        f"id {REDACTED}, session={REDACTED} ok"
    )


def test_literal_secrets_and_urls_keep_scheme_and_host() -> None:
    hook = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    r = DEFAULT_REDACTOR.with_secrets([hook, "R0UTINGKEY42", "abc"])
    assert r.redact(f"POST {hook} -> 404") == f"POST https://hooks.slack.com/{REDACTED} -> 404"
    assert r.redact("path services/T000/B000/XXXXSECRET seen") == f"path {REDACTED} seen"
    assert r.redact("key R0UTINGKEY42.") == f"key {REDACTED}."
    # Too short to be a literal secret: replacing every "abc" would wreck output, protect nothing.
    assert r.redact("abc") == "abc"


def test_redact_tree_keeps_keys_and_non_strings() -> None:
    tree = {"tried": [{"stdout": "token=xyz987", "exit_code": 0}], "n": 3.5}
    assert DEFAULT_REDACTOR.redact_tree(tree) == {
        "tried": [{"stdout": f"token={REDACTED}", "exit_code": 0}],
        "n": 3.5,
    }


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [("(unclosed", "invalid regular expression"), ("x*", "matches the empty string")],
)
def test_bad_patterns_are_refused(pattern: str, problem: str) -> None:
    with pytest.raises(PatternError, match=problem):
        compile_pattern(pattern)


def test_config_redact_errors_name_the_file_and_index() -> None:
    raw = {"redact": ["ok-[0-9]+", "(broken", "a?"]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "/etc/stanch/agent.yaml")
    text = str(err.value)
    assert "/etc/stanch/agent.yaml: redact[1]: invalid regular expression" in text
    assert "/etc/stanch/agent.yaml: redact[2]: matches the empty string" in text
    assert "redact[0]" not in text


def test_config_builds_the_redactor_once() -> None:
    config = parse_config({"redact": [r"INTERNAL-\d{4}"]})
    assert config.redactor.redact("ticket INTERNAL-1234, token=abc") == (
        f"ticket {REDACTED}, token={REDACTED}"
    )


def test_step_records_are_redacted_before_anyone_sees_them() -> None:
    seen: list[list[StepRecord]] = []
    script = "echo 'Authorization: Bearer abcdefgh123'; echo password=pw1234 >&2; exit 3"
    records = run_steps(
        [Step("leaky", ("sh", "-c", script, "token=inargv99"))],
        {},
        SubprocessRunner(),
        lambda rs: seen.append(list(rs)),
    )
    (record,) = records
    assert record.stdout == f"Authorization: Bearer {REDACTED}\n"
    assert record.stderr == f"password={REDACTED}\n"
    assert record.argv[-1] == f"token={REDACTED}"
    assert seen[-1] == records  # on_step (the journal) gets the redacted records


def test_64kib_of_output_is_redacted_quickly() -> None:
    """Compiled once; a substring pre-check skips patterns whose hint is absent. Measured here
    (the report quotes the figures): plain text ~0.7 ms, secret-dense text ~10 ms per 64 KiB."""
    r = Redactor.build([r"INTERNAL-\d{4}"], ["R0UTINGKEY42"])
    plain = ("2026-11-24 08:00:01 restarted worker 17 in 0.3s status=ok\n" * 1200)[:65536]
    dense = ("user=app password=hunter22 token=abc Bearer abcdefghij https://a:b@h/ \n" * 900)[
        :65536
    ]
    hostile = ("a-" * 32768)[:65536]
    for text in (plain, dense, hostile):
        started = time.perf_counter()
        for _ in range(5):
            out = r.redact(text)
        per_call = (time.perf_counter() - started) / 5
        assert per_call < 0.25, f"{per_call * 1000:.1f} ms for 64 KiB"
    assert "hunter22" not in r.redact(dense) and out == hostile
