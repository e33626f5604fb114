"""Redaction: secrets never leave the agent in command output, journal rows, reports or pages.

A ``Redactor`` holds compiled patterns and literal secret values. It is built once, when the agent
config is loaded (``agent.config``): the built-in patterns below, the operator's own ``redact:``
patterns (each validated there, a bad one is a load error with its index), and the secret values
the notification sinks resolved from their files and environment variables. It is immutable and
shared by every worker thread; nothing is compiled per call.

Where it applies: step output (stdout, stderr, the error and the recorded argv) is redacted by
``agent.remediate.run_steps`` before the journal sees it, so the journal, the execution reports
sent to the control plane, ``explain`` and escalation payloads (built from the journal) carry
only redacted text.

Pattern semantics. A pattern with a group named ``secret`` replaces only that group (so
``password=`` stays readable and the value goes); any other pattern replaces the whole match. A
literal secret is replaced wherever it appears; a secret that is a URL keeps its scheme and host
(``https://hooks.slack.com/[REDACTED]``) so an operator still sees where a page went.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 6
"""Shorter values are not treated as literal secrets: replacing every ``abc`` in a command's
output would destroy the output and protect nothing (such a secret is guessable anyway)."""

BUILTIN_PATTERNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (description, regex, hints): the regex runs only when the lowercased text contains one of
    # the hints. A substring test is ~100x cheaper than a case-insensitive scan, and most output
    # holds none of them (64 KiB of plain text: ~0.1 ms instead of ~8 ms).
    (
        "private key block",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
        ("private key",),
    ),  # noqa: E501
    ("bearer token", r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9._~+/=-]{8,})", ("bearer",)),
    ("stanch api token", r"\bstk_[A-Za-z0-9_-]{8,}", ("stk_",)),
    (
        "aws access key id",
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b",
        ("akia", "asia", "agpa", "aida", "aroa"),
    ),  # noqa: E501
    # No leading word: "db_password=" matches from "password" (only the value is replaced), and
    # an unbounded prefix would make a long run of "a-a-a-..." quadratic.
    (
        "password/secret assignment",
        r"(?i)(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)[a-z0-9_]{0,30}\s*[=:]\s*(?P<secret>\"[^\"\n]*\"|'[^'\n]*'|[^\s&\"',;]+)",
        ("pass", "secret", "token", "key"),
    ),  # noqa: E501
    (
        "url credentials",
        r"(?i)\b[a-z][a-z0-9+.-]{0,30}://(?P<secret>[^\s/@:]*:[^\s/@]*)@",
        ("://",),
    ),  # noqa: E501
)
"""What every agent redacts, whatever its config says."""


class PatternError(ValueError):
    """A ``redact:`` entry that is not a valid regular expression."""


def compile_pattern(text: str) -> re.Pattern[str]:
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise PatternError(f"invalid regular expression: {exc}") from None
    if pattern.match(""):
        raise PatternError("matches the empty string, so it would redact nothing useful")
    return pattern


@dataclass(frozen=True)
class Redactor:
    patterns: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = ()
    """(compiled pattern, hints); no hints: always run (the operator's own patterns)."""
    literals: tuple[tuple[str, str], ...] = ()
    """(secret text, replacement), longest first so a whole URL goes before a piece of it."""

    @classmethod
    def build(cls, extra: Sequence[str] = (), secrets: Iterable[str] = ()) -> Redactor:
        """Built-in patterns plus ``extra`` (raises PatternError) plus literal ``secrets``."""
        patterns = [(re.compile(p), hints) for _, p, hints in BUILTIN_PATTERNS]
        patterns += [(compile_pattern(p), ()) for p in extra]
        return cls(tuple(patterns)).with_secrets(secrets)

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        pairs = dict(self.literals)
        for value in secrets:
            for fragment, replacement in _fragments(value.strip()):
                pairs.setdefault(fragment, replacement)
        ordered = sorted(pairs.items(), key=lambda kv: len(kv[0]), reverse=True)
        return Redactor(self.patterns, tuple(ordered))

    def redact(self, text: str) -> str:
        if not text:
            return text
        for secret, replacement in self.literals:
            if secret in text:
                text = text.replace(secret, replacement)
        lowered = text.lower()
        for pattern, hints in self.patterns:
            if not hints or any(h in lowered for h in hints):
                text = pattern.sub(_replace, text)
        return text

    def redact_tree(self, value: Any) -> Any:
        """Every string in a JSON-like tree (dicts, lists), keys left as they are."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {k: self.redact_tree(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_tree(v) for v in value]
        return value


def _replace(match: re.Match[str]) -> str:
    if "secret" in match.re.groupindex and match.group("secret") is not None:
        start, end = match.span("secret")
        whole = match.group(0)
        base = match.start()
        return whole[: start - base] + REDACTED + whole[end - base :]
    return REDACTED


def _fragments(value: str) -> list[tuple[str, str]]:
    """What to replace for one secret value. A URL: the whole URL by scheme://host/[REDACTED],
    and its path, query and userinfo on their own (they may be printed apart from the host)."""
    if len(value) < MIN_SECRET_LENGTH:
        return []
    out = [(value, REDACTED)]
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return out
    if parts.scheme in ("http", "https") and host:
        out[0] = (value, f"{parts.scheme}://{host}/{REDACTED}")
        pieces = (parts.path, parts.path.lstrip("/"), parts.query, parts.netloc.rpartition("@")[0])
        out += [(p, REDACTED) for p in pieces if len(p) >= MIN_SECRET_LENGTH]
    return out


DEFAULT_REDACTOR = Redactor.build()
"""Built-in patterns only: what a runner constructed without an agent config uses."""
