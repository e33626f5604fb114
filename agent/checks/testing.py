"""Build one check from a plain mapping, outside a policy: for tests and for trying a check by hand.

Shipped with the code (as httpx ships ``MockTransport``) so tests of the checks, the runner and
the CLI build checks the way the loader does -- same parser, same errors -- without writing a
whole policy document around each one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.checks import CHECK_TYPES
from agent.checks.base import Check, CheckEnv
from agent.checks.proctable import ProcessTable
from agent.errors import PolicyError
from agent.policy.fields import ErrorSink, Fields


def parse_check(
    type_name: str, raw: Mapping[str, Any], path: str = "check", file: str = "<test>"
) -> Any:
    """The typed config for ``raw`` (the type's own keys only); PolicyError lists every problem."""
    if type_name not in CHECK_TYPES:
        raise KeyError(f"unknown check type {type_name!r}; known: {', '.join(CHECK_TYPES)}")
    sink = ErrorSink(file)
    f = Fields(dict(raw), path, sink)
    config = CHECK_TYPES[type_name].parse(f)
    f.done()
    if sink.errors:
        raise PolicyError(sink.errors)
    return config


def build_check(
    type_name: str,
    raw: Mapping[str, Any],
    root: str | Path = "/",
    processes: ProcessTable | None = None,
) -> Check:
    """A ready check, with paths under ``root`` and a fresh process table unless one is given."""
    config = parse_check(type_name, raw)
    env = CheckEnv(Path(root), processes if processes is not None else ProcessTable())
    return CHECK_TYPES[type_name].build(config, env)
