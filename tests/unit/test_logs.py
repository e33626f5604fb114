"""Log rendering: JSON keeps its schema; text is for a terminal, and ``auto`` tells them apart
with a real pseudo-terminal."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from agent.logs import LOGGER, choose_format, log_event, setup_logging, text_value


@pytest.fixture(autouse=True)
def restore_logger() -> Iterator[None]:
    handlers, level, propagate = LOGGER.handlers[:], LOGGER.level, LOGGER.propagate
    yield
    LOGGER.handlers[:], LOGGER.level, LOGGER.propagate = handlers, level, propagate


def test_json_lines_keep_their_schema() -> None:
    out = io.StringIO()
    setup_logging("web-17", "info", "json", out)
    log_event("remediation_started", policy="nginx-down", correlation_id="c0ffee")
    log_event("escalated", logging.WARNING, policy="nginx-down", sinks=["oncall"], message="x y")
    log_event("noise", logging.DEBUG)  # Below the level: not written.
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert set(first) == {"ts", "level", "event", "host", "policy", "correlation_id"}
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2026-01-01T00:00:00.000Z")
    assert (first["level"], first["event"], first["host"]) == (
        "info",
        "remediation_started",
        "web-17",
    )
    assert second["level"] == "warning" and second["sinks"] == ["oncall"]


def test_text_is_one_readable_line_per_event() -> None:
    out = io.StringIO()
    setup_logging("web-17", "info", "text", out)
    log_event(
        "escalated",
        logging.WARNING,
        reason="breaker_open",
        correlation_id="c0ffee",
        policy="nginx-down",
        sinks=["oncall"],
        message="circuit breaker opened after 3 tries",
        approval=None,
    )
    [line] = out.getvalue().splitlines()
    clock, rest = line.split(" ", 1)
    assert clock.endswith("Z") and len(clock) == len("12:00:00.000Z")
    assert rest == (
        "WARN  escalated policy=nginx-down correlation_id=c0ffee reason=breaker_open "
        'sinks=["oncall"] message="circuit breaker opened after 3 tries"'
    )
    assert "\x1b[" not in line  # A StringIO is no terminal: no colour codes.
    assert "web-17" not in line  # You are on the host.


def test_text_shows_the_error_of_an_exception() -> None:
    out = io.StringIO()
    setup_logging("h", "info", "text", out)
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        LOGGER.exception("journal_write_failed", extra={"event": "journal_write_failed"})
    assert (
        out.getvalue()
        .rstrip()
        .endswith('ERROR journal_write_failed error="OSError: [Errno 28] No space left on device"')
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("nginx-down", "nginx-down"),
        ("/var/lib/stanch", "/var/lib/stanch"),
        ("two words", '"two words"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        (3, "3"),
        (0.25, "0.25"),
        (True, "true"),
        ({"a": 1}, '{"a":1}'),
    ],
)
def test_text_values(value: object, text: str) -> None:
    assert text_value(value) == text


def test_auto_picks_text_on_a_terminal_and_json_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert choose_format("auto", tty) == "text"
            setup_logging("h", "info", "auto", tty)
            log_event("breaker_opened", logging.ERROR, policy="web")
            tty.flush()
            data = os.read(leader, 4096).decode()
        assert "\x1b[31mERROR\x1b[0m breaker_opened policy=web" in data
    finally:
        os.close(leader)
        os.close(follower)
    assert choose_format("auto", io.StringIO()) == "json"
    assert choose_format("text", io.StringIO()) == "text"
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        choose_format("xml", io.StringIO())


def test_no_color_is_honoured_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            setup_logging("h", "info", "auto", tty)
            log_event("breaker_opened", logging.ERROR)
            tty.flush()
            data = os.read(leader, 4096).decode()
        assert "ERROR breaker_opened" in data and "\x1b[" not in data
    finally:
        os.close(leader)
        os.close(follower)
