"""Load policy YAML into the frozen model, reporting every error as ``file: path: problem``.

One bad document never hides the others: ``load_dir`` returns the good policies and the errors
side by side, so the agent keeps running the good ones and reports the bad one.

This module reads files and YAML streams (a YAML error names its line and column) and checks
what spans documents (unique policy names); one document's schema is ``agent.policy.document``
and its sections' modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agent.errors import FieldError
from agent.policy.document import parse_policy
from agent.policy.fields import ErrorSink
from agent.policy.guardrails import parse_window
from agent.policy.model import Policy
from agent.policy.steps import TEMPLATE_RE

__all__ = [
    "MAX_POLICY_FILE_BYTES",
    "TEMPLATE_RE",
    "LoadResult",
    "load_dir",
    "load_file",
    "load_text",
    "parse_policy",
    "parse_window",
]

MAX_POLICY_FILE_BYTES = 1 << 20


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
