"""``command``: run a program with the escalation payload JSON on stdin.

For paging CLIs, mail, and custom glue that has no HTTP endpoint. The program runs with no shell,
a bounded timeout and the scrubbed environment every command the agent starts gets (no tokens,
no ``NOTIFY_SOCKET``), so a secret in the agent's environment never reaches a script.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.policy.fields import Fields
from agent.sinks.base import ERROR_BODY_LIMIT, DeliveryError, SinkType, bounded_timeout
from agent.subproc import run_bounded, scrubbed_env


@dataclass(frozen=True)
class CommandConfig:
    run: tuple[str, ...]
    timeout: float = 10.0


def parse_command(f: Fields) -> CommandConfig:
    run = f.str_list("run")
    if isinstance(run, tuple) and not run:
        f.error("run", "must name a program, e.g. [/usr/local/bin/page-oncall, --team, infra]")
    elif isinstance(run, tuple) and "/" in run[0] and not run[0].startswith("/"):
        f.error("run", "the program must be an absolute path or a name found on PATH")
    return CommandConfig(run or (), bounded_timeout(f, 10.0))


class CommandSink:
    """Exit status 0 is delivered and anything else is retried."""

    def __init__(self, config: CommandConfig) -> None:
        self.config = config

    def send(self, payload: Mapping[str, Any]) -> None:
        data = json.dumps(dict(payload), default=str).encode()
        outcome = run_bounded(
            self.config.run,
            self.config.timeout,
            env=scrubbed_env(),
            stdin=data,
            output_limit=16 * 1024,
        )
        if outcome.ok:
            return
        tail = outcome.stderr.strip()[-ERROR_BODY_LIMIT:]
        why = outcome.error or f"exited with status {outcome.exit_code}"
        message = f"{self.config.run[0]}: {why}: {tail}" if tail else f"{self.config.run[0]}: {why}"
        raise DeliveryError(message, retryable=True)


COMMAND = SinkType(
    "command",
    parse_command,
    CommandSink,
    "Run a program with the payload JSON on stdin (paging CLIs, mail, custom glue).",
)
