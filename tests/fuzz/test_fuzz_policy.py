"""Fuzz the policy parser: ``load_text`` returns (policies, errors) for ANY input, never raises.

Its contract (agent/policy/loader.py): every problem comes back as a ``FieldError`` carrying the
file; a file with any error yields no policies; a policy that loads is a frozen ``Policy``.
An exception out of it would take down a reload, or ``opsctl bundle build`` with a traceback.

Three input shapes:
- **structured**: a rich valid policy (every section) mutated as a tree: keys dropped, values
  replaced by other YAML types (huge ints, floats, NaN, nested lists, nulls, strings that look
  like durations or templates), unknown keys added, sections swapped, aliases/anchors, several
  documents per file, then dumped as YAML;
- **text**: the valid YAML's characters mutated (flips, deletions, YAML syntax inserted: tags
  such as ``!!python/object/apply``, anchors, merge keys, tabs, document markers, recursive
  aliases);
- **arbitrary** unicode text.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import yaml
from fuzzing import FUZZ, count
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import FieldError
from agent.policy.loader import load_text
from agent.policy.model import Policy

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(600)]

SEED = """\
apiVersion: stanch.dev/v1
kind: Policy
metadata:
  name: web-down
  description: restart nginx when it stops answering
  labels: {team: sre, tier: "1"}
spec:
  selector: {role: web, env: prod}
  severity: critical
  runbook: https://runbooks.example.com/web
  manual_minutes: 15
  mode: approve
  checks:
    nginx:
      type: process
      name: nginx
      interval: 5s
      timeout: 2s
      critical: {metric: count, op: "<", value: 1}
    http_port: {type: port, port: 8080}
    heartbeat:
      type: file
      path: /run/web/heartbeat
      warning: {metric: age_seconds, op: gt, value: 60}
    var: {type: disk, path: /var}
    plugin: {type: command, run: [/usr/lib/nagios/plugins/check_load, -w, "5"]}
  rule:
    when:
      any:
        - {check: nginx, metric: count, op: "<", value: 1, for: 30s}
        - all:
            - {check: http_port, state: [critical, unknown]}
            - not: {check: heartbeat, metric: exists, op: "==", value: 0}
        - {check: var, metric: used_percent, op: ">", value: 90, clear: 80, for: 1m}
    unless:
      - {check: plugin, metric: load1, op: ">", value: 20}
      - {check: heartbeat, state: warning}
  remediation:
    steps:
      - name: restart
        run: [systemctl, restart, nginx]
        timeout: 1m
        env: {SYSTEMD_PAGER: "", RETRIES: 3}
        cwd: /
      - name: kill-biggest
        run: [kill, -TERM, "{{ nginx.pid }}"]
        continue_on_error: true
      - name: note
        shell: true
        run: echo restarted >> /var/log/stanch-web.log
  verify: {settle: 2s, timeout: 30s, interval: 1s}
  guardrails:
    cooldown: 5m
    budget: {max: 3, per: 1h}
    breaker: {after: 3}
    approval_ttl: 30m
    maintenance:
      - {name: nightly, days: [mon, tue], start: "02:00", end: "04:00"}
      - {from: "2026-11-24T02:00:00+00:00", to: "2026-11-24T04:00:00+00:00"}
  escalation: {sinks: [pager], repeat: 1h}
"""
SEED_DOC: dict[str, Any] = yaml.safe_load(SEED)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["5s", "0s", "-1s", "1e9h", "1.5m", "", "{{ nginx.pid }}", "{{", "critical", "unknown",
         "auto", "observe", ">", "eq", "~", "null", "mon", "25:99", "stanch.dev/v1", "Policy",
         "/", "\x00", "a" * 300, "web-down"]
    ),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-3, 3)), inner, max_size=4),
    ),
    max_leaves=12,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += paths(value, (*prefix, index))
    return out


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def structured(draw: st.DrawFn) -> str:
    doc = copy.deepcopy(SEED_DOC)
    for _ in range(draw(st.integers(1, 6))):
        targets = [p for p in paths(doc) if p]
        if not targets:
            break
        path = draw(st.sampled_from(targets))
        parent, key = parent_of(doc, path), path[-1]
        action = draw(st.sampled_from(["replace", "drop", "add", "swap", "wrap", "cycle"]))
        if action == "replace":
            parent[key] = draw(VALUES)
        elif action == "drop":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(VALUES)
        elif action == "add" and isinstance(parent, list):
            parent.append(draw(VALUES))
        elif action == "swap":
            other = draw(st.sampled_from(targets))
            with_value = parent_of(doc, other)[other[-1]] if other and other[:-1] != path else 1
            parent[key] = copy.deepcopy(with_value)
        elif action == "cycle":  # an alias that contains itself (YAML anchors make it)
            parent[key] = {"all": [parent]} if draw(st.booleans()) else [parent]
            break
        else:
            parent[key] = [parent[key]] if draw(st.booleans()) else {"x": parent[key]}
    docs = [doc] * draw(st.integers(1, 3))
    try:
        return yaml.safe_dump_all(docs, allow_unicode=draw(st.booleans()))
    except (yaml.YAMLError, ValueError, RecursionError):  # a value PyYAML cannot write
        return SEED


SYNTAX = [
    "!!python/object/apply:os.system ['touch /tmp/stanch-fuzz-pwned']",
    "&a [*a]",
    "*undefined",
    "<<: *a",
    "\t",
    "\n---\n",
    "\n...\n",
    "{",
    "]",
    ": :",
    "? complex\n: key",
    "!!binary AAAA",
    "!!int 0x1F",
    "!!float .nan",
    "%YAML 1.1\n---\n",
    "'unterminated",
    '"\\uD800"',
    "\ufeff",
    "- - - -",
    "&x {a: &y {b: *x}}",
    "when: &w {all: [*w]}\n",
    "!!timestamp 2026-13-45",
    "!!timestamp x",
    "!!bool maybe",
    "!!float {}",
    "[" * 3000,
]


@st.composite
def text_mutations(draw: st.DrawFn) -> str:
    text = SEED
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["syntax", "delete", "char", "duplicate"]))
        if kind == "syntax":
            text = text[:at] + draw(st.sampled_from(SYNTAX)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 80)) :]
        elif kind == "char":
            text = text[:at] + draw(st.characters()) + text[at + 1 :]
        else:
            end = min(len(text), at + draw(st.integers(1, 200)))
            text = text[:end] + text[at:end] + text[end:]
    return text


def check_contract(text: str) -> None:
    policies, errors = load_text(text, "fuzz.yaml")
    assert isinstance(policies, list) and isinstance(errors, list)
    assert all(isinstance(e, FieldError) and e.file == "fuzz.yaml" for e in errors), errors
    assert all(isinstance(e.problem, str) and e.problem for e in errors)
    if errors:
        assert policies == [], "a file with errors must yield no policies"
    for policy in policies:
        assert isinstance(policy, Policy)
        for check in policy.checks:
            assert check.interval >= 1.0 and not math.isnan(check.interval)


@FUZZ
@given(structured())
def test_fuzz_policy_structured(text: str) -> None:
    count("policy: structured YAML documents")
    check_contract(text)


@FUZZ
@given(text_mutations())
def test_fuzz_policy_text_mutations(text: str) -> None:
    count("policy: mutated YAML text")
    check_contract(text)


@FUZZ
@given(st.text(max_size=400))
def test_fuzz_policy_arbitrary_text(text: str) -> None:
    count("policy: arbitrary text")
    check_contract(text)


def test_the_seed_is_a_valid_policy() -> None:
    """Mutations start from a policy that loads, so they reach every section's parser."""
    policies, errors = load_text(SEED, "seed.yaml")
    assert errors == [] and [p.name for p in policies] == ["web-down"]
