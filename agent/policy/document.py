"""One policy document: ``apiVersion``, ``kind``, ``metadata`` and the ``spec`` sections, parsed
into a frozen ``Policy`` in one pass that reports every error to the sink with its path.

The sections have modules of their own (``check_specs``, ``conditions``, ``steps``,
``guardrails``); this one checks the envelope, the selector, and assembles the result. The rule
and the steps are checked against this policy's checks, so the checks are parsed first.
"""

from __future__ import annotations

from typing import Any

from agent.policy.check_specs import NAME_RE, parse_checks
from agent.policy.conditions import parse_rule
from agent.policy.fields import ErrorSink, Fields
from agent.policy.guardrails import parse_escalation, parse_guardrails, parse_verification
from agent.policy.model import API_VERSION, KIND, Mode, Policy, Severity
from agent.policy.secrecy import no_sinks_in_policy
from agent.policy.steps import parse_remediation


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
    no_sinks_in_policy(spec)
    selector = _selector(spec.section("selector"))
    severity = spec.choice("severity", {s.value: s for s in Severity}, "warning")
    runbook = spec.string("runbook", "")
    manual_minutes = spec.number("manual_minutes", 0.0, minimum=0)
    mode = spec.choice("mode", {m.value: m for m in Mode}, "auto")
    checks = parse_checks(spec)
    names = {c.name: c for c in checks}
    rule = parse_rule(spec.section("rule", required=True), names)
    steps = parse_remediation(spec.section("remediation", required=True), names)
    verification = parse_verification(spec.section("verify"))
    guardrails = parse_guardrails(spec.section("guardrails"))
    escalation = parse_escalation(spec.section("escalation"))
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
