"""The ``spec.remediation`` section: the steps, each an argv list (or, with ``shell: true``, one
script for ``/bin/sh -c``), with its timeout, env, cwd and ``run_as``.

Check values reach a step only as a whole argv element, ``{{ check.metric }}``, naming a check
of this policy and a metric its type produces: never spliced into a larger string, never into a
shell script, so each value stays one argument.
"""

from __future__ import annotations

import re
from typing import Any

from agent.checks import CHECK_TYPES
from agent.policy.fields import ErrorSink, Fields, join
from agent.policy.model import CheckSpec, RunAs, Step
from agent.policy.secrecy import no_secret_env

TEMPLATE_RE = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?$")


def parse_remediation(f: Fields, checks: dict[str, CheckSpec]) -> list[Step]:
    default = _run_as(f) if f.ok else None
    steps = f.items(
        "steps", lambda item, path: _step(item, path, f.sink, checks, default), required=True
    )
    if f.ok and f.has("steps") and not steps and not f.sink.errors:
        f.error("steps", "needs at least one step")
    f.done()
    return steps


def _step(
    raw: Any, path: str, sink: ErrorSink, checks: dict[str, CheckSpec], default: RunAs | None
) -> Step | None:
    f = Fields(raw, path, sink)
    if not f.ok:
        return None
    name = f.string("name")
    shell = f.boolean("shell", False)
    run = f.get("run")
    timeout = f.duration("timeout", "30s", minimum=0.1)
    env = f.str_map("env")
    no_secret_env(f, env, sink)
    cwd = f.string("cwd", None)
    keep_going = f.boolean("continue_on_error", False)
    run_as = _run_as(f) if f.has("run_as") else default
    f.done()
    argv: tuple[str, ...] = ()
    if shell:
        if not isinstance(run, str):
            f.error("run", "with shell: true, 'run' is one string (the script for /bin/sh -c)")
        elif TEMPLATE_RE.search(run):
            f.error(
                "run",
                "check values cannot be templated into a shell string; use an argv "
                "list (shell: false) so each value stays one argument",
            )
        else:
            argv = (run,)
    elif isinstance(run, list) and run and all(isinstance(a, str | int | float) for a in run):
        argv = tuple(str(a) for a in run)
        for i, arg in enumerate(argv):
            _check_template(arg, join(f.at("run"), i), sink, checks)
    elif run is not None:
        f.error(
            "run",
            "expected an argv list such as ['systemctl', 'restart', 'nginx'] "
            "(set shell: true to run a shell string)",
        )
    if cwd is not None and not cwd.startswith("/"):
        f.error("cwd", "must be an absolute path")
    if not argv or not isinstance(name, str):
        return None
    return Step(
        name, argv, bool(shell), timeout, tuple(sorted(env.items())), cwd, keep_going, run_as
    )


def _run_as(f: Fields) -> RunAs | None:
    """``run_as: user``, ``run_as: user:group`` or ``run_as: {user: u, group: g}``. Only the
    syntax is checked here; the host resolves the names (``agent.runas``), because bundles are
    built and reviewed on machines that do not have the fleet's accounts."""
    raw = f.get("run_as", None)
    path = f.at("run_as")
    if raw is None:
        return None
    if isinstance(raw, str):
        user, _, group = raw.partition(":")
        given: str | None = group if ":" in raw else None
    elif isinstance(raw, dict):
        r = Fields(raw, path, f.sink)
        user, given = r.string("user", None) or "", r.string("group", None)
        r.done()
    else:
        f.error("run_as", "expected a user name, 'user:group' or {user: ..., group: ...}")
        return None
    bad = [n for n in (user, given) if n is not None and not ACCOUNT_RE.match(n)]
    if bad or not user:
        f.error(
            "run_as",
            f"{bad[0] if bad else user!r} is not a user or group name "
            "(letters, digits, '_', '.', '-'; or a numeric id)",
        )
        return None
    return RunAs(user, given, path)


def _check_template(arg: str, path: str, sink: ErrorSink, checks: dict[str, CheckSpec]) -> None:
    matches = list(TEMPLATE_RE.finditer(arg))
    if not matches:
        if "{{" in arg:
            sink.add(path, "malformed template; write '{{ check.metric }}'")
        return
    if len(matches) > 1 or matches[0].span() != (0, len(arg)):
        sink.add(
            path,
            "a template must be the whole argument ('{{ check.metric }}'), "
            "never spliced into a larger string",
        )
        return
    ref = matches[0].group(1)
    check, _, metric = ref.partition(".")
    if check not in checks or not metric:
        sink.add(
            path,
            f"template {ref!r} must name a check of this policy and a metric "
            f"(known checks: {', '.join(checks)})",
        )
        return
    known = CHECK_TYPES[checks[check].type].metrics
    if known is not None and metric not in known:
        sink.add(
            path, f"check {check!r} has no metric {metric!r}; known: {', '.join(sorted(known))}"
        )
