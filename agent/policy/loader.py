"""Load policy YAML into the frozen model, reporting every error as ``file: path: problem``.

One bad document never hides the others: ``load_dir`` returns the good policies and the errors
side by side, so the agent keeps running the good ones and reports the bad one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.checks import CHECK_TYPES
from agent.checks.base import STATUS_BY_NAME, Threshold
from agent.errors import FieldError
from agent.policy.fields import ErrorSink, Fields, join
from agent.policy.model import (
    API_VERSION,
    KIND,
    AllOf,
    AnyOf,
    Budget,
    CheckSpec,
    Compare,
    Condition,
    Escalation,
    Guardrails,
    Mode,
    Not,
    Policy,
    Rule,
    RunAs,
    Severity,
    StateIs,
    Step,
    Verification,
    Window,
)

MAX_POLICY_FILE_BYTES = 1 << 20
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
TEMPLATE_RE = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
OPS = {
    ">": ">",
    "gt": ">",
    ">=": ">=",
    "ge": ">=",
    "<": "<",
    "lt": "<",
    "<=": "<=",
    "le": "<=",
    "==": "==",
    "eq": "==",
    "!=": "!=",
    "ne": "!=",
}
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?$")
SECRET_SUFFIXES = ("_TOKEN", "_SECRET", "_PASSWORD", "_PASSWD", "_KEY", "_CREDENTIALS")
SECRET_NAMES = frozenset({"TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "API_KEY"})
SINK_SECRET_KEYS = ("url", "webhook", "routing_key", "token", "secret", "password", "headers")
SECRETS_ELSEWHERE = (
    "policies and bundles are signed once, copied to every host and kept by the control plane, "
    "so a secret here is readable by everyone who can read a rollout"
)
DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
MIN_INTERVAL = 1.0


@dataclass
class LoadResult:
    policies: list[Policy] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    failed_files: set[str] = field(default_factory=set)


def load_dir(directory: str | Path, host_accounts: bool = False) -> LoadResult:
    """Load every ``*.yaml``/``*.yml`` file in ``directory`` (sorted, not recursive).

    ``host_accounts``: also resolve every ``run_as`` on this host (``agent.runas``), so a user
    that does not exist here, or an agent that is not root, is a load error of that file. The
    agent loading the policies it will run sets it; bundle builds and reviews, which run on
    machines without the fleet's accounts, do not."""
    root = Path(directory)
    result = LoadResult()
    if not root.is_dir():
        result.errors.append(FieldError(str(root), "", "not a directory of policy files"))
        return result
    files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    for path in files:
        policies, errors = load_file(path)
        result.policies.extend(policies)
        result.errors.extend(errors)
        if errors:
            result.failed_files.add(str(path))
    _check_unique_names(result)
    if host_accounts:
        from agent.runas import check_policies

        good, errors = check_policies(result.policies)
        result.errors.extend(errors)
        result.failed_files.update(e.file for e in errors)
        # As for any other error: a file with one bad policy runs none of them.
        result.policies = [p for p in good if p.source not in result.failed_files]
    return result


def load_file(path: str | Path) -> tuple[list[Policy], list[FieldError]]:
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return [], [FieldError(name, "", f"cannot read: {exc.strerror}")]
    if len(data) > MAX_POLICY_FILE_BYTES:
        return [], [FieldError(name, "", f"file is larger than {MAX_POLICY_FILE_BYTES} bytes")]
    return load_text(data.decode("utf-8", errors="replace"), name)


def load_text(text: str, file: str) -> tuple[list[Policy], list[FieldError]]:
    """Parse one YAML stream (one or more ``---`` documents). A file with any error yields no
    policies: half a file is a surprise an operator should not get at 3 AM."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return [], [FieldError(file, where, f"invalid YAML: {problem}")]
    except (ValueError, OverflowError, LookupError, AttributeError, TypeError) as exc:
        # PyYAML's constructors raise these, not YAMLError, for an explicit tag whose value does
        # not convert (``!!int 0x1Fz`` ValueError, ``!!bool maybe`` KeyError, ``!!timestamp x``
        # AttributeError from a failed match): found by tests/fuzz. Only PyYAML runs in this try.
        problem = "a value with an explicit tag (!!int, !!bool, !!timestamp ...) does not convert"
        return [], [FieldError(file, "", f"invalid YAML: {problem} ({type(exc).__name__}: {exc})")]
    except RecursionError:
        return [], [FieldError(file, "", "invalid YAML: nested too deeply")]
    if not docs:
        return [], [FieldError(file, "", "no policy documents in file")]
    sink = ErrorSink(file)
    policies = []
    try:
        for index, doc in enumerate(docs):
            prefix = f"[{index}]" if len(docs) > 1 else ""
            policy = parse_policy(doc, file, sink, prefix)
            if policy is not None:
                policies.append(policy)
    except RecursionError:  # ``when: &w {all: [*w]}``: a condition that contains itself
        return [], [FieldError(file, "", "nested too deeply (a YAML alias that contains itself?)")]
    if sink.errors:
        return [], sink.errors
    return policies, []


def parse_policy(doc: Any, file: str, sink: ErrorSink, prefix: str = "") -> Policy | None:
    top = Fields(doc, prefix, sink)
    if not top.ok:
        return None
    api = top.string("apiVersion")
    if api is not None and api != API_VERSION:
        top.error("apiVersion", f"unsupported apiVersion {api!r}; this agent reads {API_VERSION}")
    kind = top.string("kind")
    if kind is not None and kind != KIND:
        top.error("kind", f"expected {KIND!r}, got {kind!r}")
    meta = top.section("metadata", required=True)
    name = meta.string("name")
    if isinstance(name, str) and not NAME_RE.match(name):
        meta.error("name", "use lowercase letters, digits, '.', '_' or '-' (max 63 characters)")
    labels = meta.str_map("labels")
    description = meta.string("description", "")
    meta.done()

    spec = top.section("spec", required=True)
    _no_sinks_in_policy(spec)
    selector = _selector(spec.section("selector"))
    severity = spec.choice("severity", {s.value: s for s in Severity}, "warning")
    runbook = spec.string("runbook", "")
    manual_minutes = spec.number("manual_minutes", 0.0, minimum=0)
    mode = spec.choice("mode", {m.value: m for m in Mode}, "auto")
    checks = _checks(spec)
    names = {c.name: c for c in checks}
    rule = _rule(spec.section("rule", required=True), names)
    steps = _remediation(spec.section("remediation", required=True), names)
    verification = _verification(spec.section("verify"))
    guardrails = _guardrails(spec.section("guardrails"))
    escalation = _escalation(spec.section("escalation"))
    spec.done()
    top.done()
    if sink.errors or rule is None or not isinstance(name, str):
        return None
    return Policy(
        name=name,
        source=file,
        checks=tuple(checks),
        rule=rule,
        steps=tuple(steps),
        labels=tuple(sorted(labels.items())),
        selector=selector,
        severity=Severity(severity),
        description=description,
        runbook=runbook,
        manual_minutes=float(manual_minutes),
        mode=Mode(mode),
        verification=verification,
        guardrails=guardrails,
        escalation=escalation,
    )


def _selector(f: Fields) -> tuple[tuple[str, str], ...]:
    if f.has("matchLabels"):
        labels = f.str_map("matchLabels")
        f.done()
    else:
        labels = {k: str(v) for k, v in f.raw.items() if isinstance(k, str)}
        for key in f.raw:
            if isinstance(f.raw[key], dict | list):
                f.error(str(key), "selector values must be strings (label equality)")
    return tuple(sorted(labels.items()))


# ---- checks --------------------------------------------------------------------------------


def _checks(spec: Fields) -> list[CheckSpec]:
    raw = spec.get("checks")
    if raw is None:
        return []
    if not isinstance(raw, dict) or not raw:
        spec.error("checks", "expected a non-empty mapping of check name to check")
        return []
    out = []
    for name, body in raw.items():
        path = join(spec.at("checks"), str(name))
        if not isinstance(name, str) or not NAME_RE.match(name.replace("_", "-")):
            spec.sink.add(path, "check names use letters, digits, '_' or '-'")
            continue
        check = _check(name, Fields(body, path, spec.sink))
        if check is not None:
            out.append(check)
    return out


def _check(name: str, f: Fields) -> CheckSpec | None:
    if not f.ok:
        return None
    type_name = f.string("type")
    interval = f.duration("interval", "10s", minimum=MIN_INTERVAL)
    timeout = f.duration("timeout", "10s", minimum=0.1)
    ctype = CHECK_TYPES.get(type_name) if isinstance(type_name, str) else None
    if isinstance(type_name, str) and ctype is None:
        f.error("type", f"unknown check type {type_name!r}; known: {', '.join(CHECK_TYPES)}")
    config = ctype.parse(f) if ctype else None
    metrics = ctype.metrics if ctype else None
    warning = _threshold(f, "warning", metrics)
    critical = _threshold(f, "critical", metrics)
    if ctype is not None:
        f.done()  # with an unknown type its own keys are unknowable: report the type only
    if ctype is None:
        return None
    return CheckSpec(
        name=name,
        type=ctype.name,
        config=config,
        interval=interval,
        timeout=timeout,
        warning=warning,
        critical=critical,
    )


def _threshold(f: Fields, key: str, metrics: frozenset[str] | None) -> Threshold | None:
    if not f.has(key):
        f.get(key, None)
        return None
    t = f.section(key)
    metric = t.string("metric")
    op = t.choice("op", OPS)
    value = t.typed("value", (int, float, str))
    t.done()
    if metrics is not None and isinstance(metric, str) and metric not in metrics:
        t.error("metric", f"unknown metric {metric!r}; known: {', '.join(sorted(metrics))}")
    if metric is None or op is None or value is None:
        return None
    return Threshold(metric=metric, op=op, value=value)


# ---- rule ----------------------------------------------------------------------------------


def _rule(f: Fields, checks: dict[str, CheckSpec]) -> Rule | None:
    if not f.ok:
        return None
    when = _condition(f.get("when"), f.at("when"), f.sink, checks)
    unless: list[Condition] = f.items(
        "unless", lambda item, path: _condition(item, path, f.sink, checks)
    )
    f.done()
    if when is None:
        return None
    return Rule(when=when, unless=tuple(unless))


def _condition(
    raw: Any, path: str, sink: ErrorSink, checks: dict[str, CheckSpec]
) -> Condition | None:
    if raw is None:
        return None
    f = Fields(raw, path, sink)
    if not f.ok:
        return None
    combinators = [k for k in ("all", "any", "not") if f.has(k)]
    if len(combinators) > 1 or (combinators and f.has("check")):
        sink.add(path, "use exactly one of 'all', 'any', 'not' or 'check' per condition")
        return None
    if combinators == ["not"]:
        item = _condition(f.get("not"), f.at("not"), sink, checks)
        f.done()
        return Not(path, item) if item is not None else None
    if combinators:
        key = combinators[0]
        items: list[Condition] = f.items(
            key, lambda i, p: _condition(i, p, sink, checks), required=True
        )
        f.done()
        if not items:
            if not f.raw.get(key):
                sink.add(f.at(key), "needs at least one condition")
            return None
        return AllOf(path, tuple(items)) if key == "all" else AnyOf(path, tuple(items))
    if not f.has("check"):
        sink.add(
            path,
            "a condition needs 'check' (with 'metric'/'op'/'value' or 'state'), "
            "or one of 'all', 'any', 'not'",
        )
        return None
    check = f.string("check")
    spec = checks.get(check) if isinstance(check, str) else None
    if isinstance(check, str) and spec is None:
        f.error("check", f"no check named {check!r} in spec.checks; known: {', '.join(checks)}")
    hold = f.duration("for", 0.0)
    if f.has("state"):
        states = f.str_list("state")
        bad = [s for s in states or () if s not in STATUS_BY_NAME]
        if bad:
            f.error("state", f"unknown state {bad[0]!r}; use ok, warning, critical or unknown")
        f.done()
        if bad or not states or spec is None:
            return None
        return StateIs(path, spec.name, frozenset(STATUS_BY_NAME[s] for s in states), hold)
    metric = f.string("metric")
    op = f.choice("op", OPS)
    value = f.typed("value", (int, float, str))
    clear = f.number("clear", None)
    f.done()
    if spec is not None and isinstance(metric, str):
        known = CHECK_TYPES[spec.type].metrics
        if known is not None and metric not in known:
            f.error(
                "metric",
                f"check {check!r} ({spec.type}) has no metric {metric!r}; "
                f"known: {', '.join(sorted(known))}",
            )
    if clear is not None:
        if op not in (">", ">=", "<", "<="):
            f.error("clear", "'clear' (hysteresis) needs an ordering op: >, >=, < or <=")
        elif isinstance(value, int | float) and (op in (">", ">=")) != (clear <= value):
            side = "at or below" if op in (">", ">=") else "at or above"
            f.error("clear", f"must be {side} 'value' ({value}) so the condition can clear")
    if isinstance(value, str) and op not in ("==", "!="):
        f.error("value", f"a text value only works with == or !=, not {op}")
    if spec is None or metric is None or op is None or value is None:
        return None
    return Compare(path, spec.name, metric, op, value, clear, hold)


# ---- remediation, verification, guardrails, escalation -------------------------------------


def _remediation(f: Fields, checks: dict[str, CheckSpec]) -> list[Step]:
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
    for var in env:
        if var.upper() in SECRET_NAMES or var.upper().endswith(SECRET_SUFFIXES):
            sink.add(
                join(f.at("env"), var),
                f"looks like a secret; {SECRETS_ELSEWHERE}. Keep it in a root-only file on "
                f"the host and pass its path instead, e.g. {var}_FILE: /etc/stanch/secrets/...",
            )
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


def _no_sinks_in_policy(spec: Fields) -> None:
    for key in ("sinks", "notify", "notifications"):
        if spec.has(key):
            spec.get(key)  # Reported here, with what to do, rather than as an unknown key.
            spec.error(
                key,
                f"sinks are configured in the agent config (sinks:), never in a policy: "
                f"{SECRETS_ELSEWHERE}. Name a configured sink under spec.escalation.sinks",
            )


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


def _verification(f: Fields) -> Verification:
    v = Verification(
        settle=f.duration("settle", "2s"),
        timeout=f.duration("timeout", "30s", minimum=0.1),
        interval=f.duration("interval", "1s", minimum=0.1),
    )
    f.done()
    return v


def _guardrails(f: Fields) -> Guardrails:
    cooldown = f.duration("cooldown", "5m")
    b = f.section("budget")
    budget = Budget(b.integer("max", 3, minimum=1), b.duration("per", "1h", minimum=1))
    b.done()
    br = f.section("breaker")
    breaker_after = br.integer("after", 3, minimum=1)
    br.done()
    ttl = f.duration("approval_ttl", "1h", minimum=1)
    windows = f.items("maintenance", lambda item, path: parse_window(item, path, f.sink))
    f.done()
    return Guardrails(cooldown, budget, breaker_after, ttl, tuple(windows))


def parse_window(raw: Any, path: str, sink: ErrorSink) -> Window | None:
    """``{days: [sat, sun], start: "02:00", end: "04:00"}`` (UTC) or ``{from: ISO, to: ISO}``."""
    from datetime import datetime

    f = Fields(raw, path, sink)
    name = f.string("name", "")
    if f.has("from") or f.has("to"):
        stamps = []
        for key in ("from", "to"):
            value = f.get(key)
            try:
                stamp = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
                if stamp.tzinfo is None:
                    f.error(key, "give a timezone, e.g. 2026-11-24T02:00:00+00:00")
                stamps.append(stamp.timestamp())
            except ValueError:
                f.error(key, "expected an ISO 8601 timestamp, e.g. 2026-11-24T02:00:00+00:00")
        f.done()
        if len(stamps) != 2:
            return None
        if stamps[1] <= stamps[0]:
            sink.add(path, "'to' must be after 'from'")
        return Window(start_at=stamps[0], end_at=stamps[1], name=name)
    days = f.str_list("days", ())
    bad = [d for d in days if d[:3].lower() not in DAYS]
    if bad:
        f.error("days", f"unknown day {bad[0]!r}; use mon, tue, wed, thu, fri, sat, sun")
    start = _minute_of_day(f, "start")
    end = _minute_of_day(f, "end")
    f.done()
    if start is None or end is None or bad:
        return None
    chosen = frozenset(DAYS[d[:3].lower()] for d in days) if days else frozenset(range(7))
    return Window(days=chosen, start_minute=start, end_minute=end, name=name)


def _minute_of_day(f: Fields, key: str) -> int | None:
    value = f.get(key)
    # YAML 1.1 reads an unquoted 02:00 as a base-60 integer (120). An unquoted 25:00 is 1500,
    # no time of day: it falls through to the error below rather than silently dropping the window.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1440:
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}", value):
        hours, minutes = (int(x) for x in value.split(":"))
        if hours < 24 and minutes < 60:
            return hours * 60 + minutes
    if value is not None:
        f.error(key, "expected a time of day as HH:MM (UTC)")
    return None


def _escalation(f: Fields) -> Escalation:
    for key in list(f.raw):
        if isinstance(key, str) and key.startswith(SINK_SECRET_KEYS):
            f.get(key)  # Reported here, with what to do, rather than as an unknown key.
            f.error(
                key,
                f"sink settings and their secrets (webhook URLs, routing keys, tokens) belong "
                f"in the agent config, read from a *_file or *_env there; {SECRETS_ELSEWHERE}. "
                "Here, name a configured sink: escalation.sinks: [pager]",
            )
    e = Escalation(sinks=f.str_list("sinks", ()), repeat=f.duration("repeat", "1h", minimum=1))
    f.done()
    return e


def _check_unique_names(result: LoadResult) -> None:
    seen: dict[str, str] = {}
    unique = []
    for policy in result.policies:
        if policy.name in seen:
            result.errors.append(
                FieldError(
                    policy.source,
                    "metadata.name",
                    f"policy {policy.name!r} is already defined in {seen[policy.name]}",
                )
            )
            result.failed_files.add(policy.source)
            continue
        seen[policy.name] = policy.source
        unique.append(policy)
    result.policies = unique
