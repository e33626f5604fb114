"""Structured logs, one event per line: JSON for pipelines, or text for a person at a terminal.

``log_event`` is the one way the agent logs, so every line carries the event name and the
policy/correlation id where there is one. The correlation id is the execution id: it is in the
journal row, in the escalation payload and in the report sent to the control plane, so one grep
follows a remediation from intent to page.

Two renderings of the same record:

- **json** (default when stderr is not a terminal): ``ts`` (UTC, milliseconds), ``level``,
  ``event``, ``host`` and the context fields. journald, Fluent Bit and Loki parse it as is, and no
  regex ever has to guess where a message ends.
- **text** (default on a terminal, or ``--log-format text``): ``12:03:07.481Z WARN  escalated
  policy=web reason=breaker_open``. Same fields, ``key=value``, values quoted only when they
  need it; the host is left out because you are on it.

``auto`` picks by ``isatty()``, the way ``ls`` picks columns, so ``stanch-agent run`` in a shell is
readable and the same command under systemd or in a pod emits JSON without a flag.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

LOGGER = logging.getLogger("stanch.agent")
FORMATS = ("auto", "json", "text")
_LEVELS = {
    "DEBUG": "DEBUG",
    "INFO": "INFO ",
    "WARNING": "WARN ",
    "ERROR": "ERROR",
    "CRITICAL": "CRIT ",
}
_COLOURS = {"WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}
_RESET = "\x1b[0m"
_FIRST = ("policy", "correlation_id")
"""Shown first in text, in this order: what an operator scans for."""


def _timestamp(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, "fields", {}))
    if record.exc_info:
        fields["error"] = logging.Formatter().formatException(record.exc_info).splitlines()[-1]
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.getMessage()),
            "host": self.host,
        }
        body.update(_fields(record))
        return json.dumps(body, default=str)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS.mmmZ LEVEL event key=value ...``; warnings and errors coloured when
    ``colour`` is on (a terminal, and ``NO_COLOR`` unset: https://no-color.org)."""

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        order = [k for k in _FIRST if k in fields] + [k for k in fields if k not in _FIRST]
        pairs = [f"{k}={text_value(fields[k])}" for k in order if fields[k] is not None]
        level = _LEVELS.get(record.levelname, record.levelname[:5].ljust(5))
        if self.colour and record.levelname in _COLOURS:
            level = f"{_COLOURS[record.levelname]}{level}{_RESET}"
        event = str(getattr(record, "event", record.getMessage()))
        line = f"{_timestamp(record)[11:]} {level} {event}"
        return f"{line} {' '.join(pairs)}" if pairs else line


def text_value(value: Any) -> str:
    """A value as one shell-like token: bare when it is simple, JSON-quoted otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        simple = value and all(c.isalnum() or c in "-_./:@+,%" for c in value)
        return value if simple else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def choose_format(fmt: str, stream: TextIO) -> str:
    """``auto`` -> ``text`` on a terminal, ``json`` anywhere else."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    return "text" if _isatty(stream) else "json"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # No isatty, or a closed stream.
        return False


def setup_logging(
    host: str, level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Send the agent's events to ``stream`` (stderr) as ``fmt``: auto, json or text."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    if choose_format(fmt, out) == "text":
        colour = _isatty(out) and not os.environ.get("NO_COLOR")
        handler.setFormatter(TextFormatter(colour=colour))
    else:
        handler.setFormatter(JsonFormatter(host))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    if LOGGER.isEnabledFor(level):
        LOGGER.log(level, event, extra={"event": event, "fields": fields})
